"""Export wall time: `tuneship export` against a plain load + save of the base model.

    .venv/bin/python bench/export_time.py [--rank 16] [--repeats 2]

On the default base model (SmolLM2-135M-Instruct), with a LoRA adapter of the given rank
on all linear layers (random, non-zero weights: the merge does the same work as for a
trained one). The baseline loads the base with transformers and saves it as bf16
safetensors, the least any export must do. tuneship's export also merges, writes the
tokenizer, generation config, model card and manifest, reloads the result and checks
parity against base + adapter. Prints both times (best of --repeats) and their ratio.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def make_adapter(base_path: Path, rank: int, out: Path, seed: int = 0) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def plain_load_save(base_path: Path, out: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(out)
    return time.perf_counter() - started


def tuneship_export(adapter: Path, base_path: Path, out: Path) -> float:
    from tuneship.export.merge import export_merged

    started = time.perf_counter()
    export_merged(adapter, out, base_spec=str(base_path), dtype="bf16")
    return time.perf_counter() - started


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    from tuneship.models import resolve_base

    base = resolve_base("default")
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        adapter = make_adapter(base.path, args.rank, work_dir / "adapter")
        plain, ours = [], []
        for i in range(args.repeats):
            plain.append(plain_load_save(base.path, work_dir / f"plain-{i}"))
            ours.append(tuneship_export(adapter, base.path, work_dir / f"export-{i}"))
            shutil.rmtree(work_dir / f"plain-{i}")
            shutil.rmtree(work_dir / f"export-{i}")
    print()
    print(f"machine: {torch.get_num_threads()} threads; base {base.name}; LoRA rank {args.rank}, all-linear")
    print(f"plain load + save (bf16)          {min(plain):7.2f} s (best of {args.repeats})")
    print(f"tuneship export (merge + checks)  {min(ours):7.2f} s (best of {args.repeats})")
    print(f"ratio export / plain: {min(ours) / min(plain):.2f}x")


if __name__ == "__main__":
    main()
