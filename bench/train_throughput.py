"""Training throughput: `tuneship train` against a plain tutorial-style SFTTrainer script.

    .venv/bin/python bench/train_throughput.py [--steps 10]

Both arms train LoRA (r=16, all-linear) on the default base model and the ticket
example data, for the same number of optimizer steps on this machine, in one run.
The baseline is the kind of script tutorials show: fp32, batches padded to the
longest row, no packing, TRL tokenizing the chat rows itself. Prints tokens/second
of each arm, their ratio, and model FLOPs utilisation (6 * parameters * tokens per
second) against a bf16 and an fp32 matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "tickets" / "train.jsonl"


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 5) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - started)


def plain_sft(base_path: Path, steps: int, out: Path) -> tuple[float, float]:
    """(tokens, seconds) of the tutorial recipe."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_length=512,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear"),
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    tokens = max(e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e)
    return tokens, seconds


def tuneship_train(steps: int, out: Path) -> tuple[float, float]:
    from tuneship.config import load_config
    from tuneship.train.config import TrainConfig
    from tuneship.train.sft import train_model

    config = load_config(
        TrainConfig,
        REPO / "train" / "configs" / "demo.yaml",
        data=str(DATA),
        runs_dir=str(out),
        max_steps=steps,
        logging_steps=1,
        eval_data="",
        save_steps=10_000,
    )
    result = train_model(config, force=True)
    return result.summary["num_tokens"], result.summary["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    from tuneship.models import resolve_base

    base = resolve_base("default")
    import torch
    from transformers import AutoModelForCausalLM

    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base.path).parameters())
    peaks = {"bf16": matmul_peak("bfloat16"), "fp32": matmul_peak("float32")}
    with tempfile.TemporaryDirectory() as tmp:
        arms = {
            "plain SFTTrainer (fp32, padded)": plain_sft(base.path, args.steps, Path(tmp) / "plain"),
            "tuneship train": tuneship_train(args.steps, Path(tmp) / "runs"),
        }
    print(
        f"\nmachine: {torch.get_num_threads()} threads; matmul peak bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, "
        f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s; model {params / 1e6:.1f}M parameters; "
        f"{args.steps} steps each"
    )
    rates = {}
    for name, (tokens, seconds) in arms.items():
        rates[name] = tokens / seconds
        flops = 6 * params * rates[name]
        print(
            f"{name:34s} {tokens:8.0f} tokens in {seconds:6.1f}s = {rates[name]:7.1f} tokens/s; "
            f"MFU {flops / peaks['bf16']:.1%} of bf16 peak, {flops / peaks['fp32']:.1%} of fp32 peak"
        )
    baseline, ours = rates.values()
    print(f"ratio tuneship / plain: {ours / baseline:.2f}x tokens/s")


if __name__ == "__main__":
    main()
