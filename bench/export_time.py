"""Export wall time: `tuneship export` (safetensors and GGUF) against a plain load + save of the base.

    .venv/bin/python bench/export_time.py [--rank 16] [--repeats 2] [--gguf f16,bf16,q8_0]

On the default base model (SmolLM2-135M-Instruct), with a LoRA adapter of the given rank
on all linear layers (random, non-zero weights: the merge does the same work as for a
trained one). The baseline loads the base with transformers and saves it as bf16
safetensors, the least any export must do. tuneship's export also loads the adapter into PEFT,
computes base + adapter and the merged weights (rounded to bf16) in fp32 on a fixed conversation,
merges, writes the tokenizer, generation config, model card and manifest, and checks the saved
tensors against the checked ones. The GGUF export (``--format gguf``) merges, writes one file,
reloads it with transformers' GGUF loader and compares logits and greedy continuations; its
parity numbers, printed per type, are the measurements behind the tolerances in
``export/gguf_parity.py``. Prints the times (best of --repeats) and their ratios to the plain save,
best against best and the median of each round's export over the plain save measured just before.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
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


def tuneship_gguf(adapter: Path, base_path: Path, out: Path, quant: str) -> tuple[float, str]:
    from tuneship.export.gguf_export import export_gguf

    started = time.perf_counter()
    result = export_gguf(adapter, out, base_spec=str(base_path), quant=quant)  # type: ignore[arg-type]
    return time.perf_counter() - started, result.parity.summary()


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--gguf", default="f16,q8_0", help="GGUF types to time (comma-separated; '' for none)"
    )
    args = parser.parse_args()

    import torch

    from tuneship.models import resolve_base

    base = resolve_base("default")
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        adapter = make_adapter(base.path, args.rank, work_dir / "adapter")
        quants = [q for q in args.gguf.split(",") if q]
        plain, ours = [], []
        gguf: dict[str, list[float]] = {q: [] for q in quants}
        parity: dict[str, str] = {}
        for i in range(args.repeats):
            plain.append(plain_load_save(base.path, work_dir / f"plain-{i}"))
            ours.append(tuneship_export(adapter, base.path, work_dir / f"export-{i}"))
            for quant in quants:
                seconds, parity[quant] = tuneship_gguf(
                    adapter, base.path, work_dir / f"gguf-{quant}-{i}", quant
                )
                gguf[quant].append(seconds)
                shutil.rmtree(work_dir / f"gguf-{quant}-{i}")
            shutil.rmtree(work_dir / f"plain-{i}")
            shutil.rmtree(work_dir / f"export-{i}")
    print()
    print(f"machine: {torch.get_num_threads()} threads; base {base.name}; LoRA rank {args.rank}, all-linear")
    print(f"plain load + save (bf16)          {min(plain):7.2f} s (best of {args.repeats})")
    print(f"tuneship export (merge + checks)  {min(ours):7.2f} s (best of {args.repeats})")
    # The machine's speed drifts within a run: each export is also divided by the plain save
    # measured just before it, and the median of those ratios is the figure to quote.
    rounds = [o / p for o, p in zip(ours, plain, strict=True)]
    print(
        f"ratio export / plain: {min(ours) / min(plain):.2f}x best against best; "
        f"{statistics.median(rounds):.2f}x median of the rounds ({', '.join(f'{r:.2f}' for r in rounds)})"
    )
    for quant, times in gguf.items():
        best = min(times)
        print(f"tuneship export --format gguf --quant {quant:<5} {best:7.2f} s ({best / min(plain):.2f}x)")
        print(f"  parity: {parity[quant]}")


if __name__ == "__main__":
    main()
