"""Training throughput: `tuneship train` against a plain tutorial-style SFTTrainer script.

    .venv/bin/python bench/train_throughput.py [--steps 10] [--arms plain tuneship trl-loss] [--rounds 1]

Every arm trains LoRA (r=16, all-linear) on the default base model and the ticket
example data, for the same number of optimizer steps on this machine, in one run.

  plain     the kind of script tutorials show: fp32, batches padded to the longest row,
            no packing, TRL tokenizing the chat rows itself.
  tuneship  ``tuneship train`` with the demo preset (its sparse loss: logits only where a
            token is trained, train/trainer.py).
  trl-loss  the same, but with TRL's own loss (``loss_type="nll"``, the default of
            ``SFTConfig``): the arm that says when train/trainer.py can go.

With ``--rounds N`` the arms run N times, in alternating order (A B, B A, ...), so that a
change in the machine's load falls on every arm alike; their tokens and seconds are summed.
Prints tokens/second of each arm, the ratios to the first arm, and model FLOPs utilisation
(6 * parameters * tokens per second) against a bf16 and an fp32 matmul peak measured in
the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.resources import as_file, files
from pathlib import Path

# The example data lives in the source checkout; the preset is package data of tuneship.train.
DATA = Path(__file__).resolve().parents[1] / "examples" / "tickets" / "train.jsonl"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import matmul_peak, mfu  # noqa: E402


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


def tuneship_train(steps: int, out: Path, trl_loss: bool = False) -> tuple[float, float]:
    """(tokens, seconds) of `tuneship train` with the demo preset; ``trl_loss``: TRL's own loss."""
    import tuneship.train.sft as sft
    from tuneship.config import load_config
    from tuneship.train.config import TrainConfig

    with as_file(files("tuneship.train").joinpath("configs", "demo.yaml")) as preset:
        config = load_config(
            TrainConfig,
            preset,
            data=str(DATA),
            runs_dir=str(out),
            max_steps=steps,
            logging_steps=1,
            eval_data="",
            save_steps=10_000,
        )
    build = sft.build_trainer

    def with_trl_loss(*args: object, **kwargs: object) -> object:
        trainer = build(*args, **kwargs)
        trainer.sparse_loss = False  # SparseLossSFTTrainer then defers to SFTTrainer.compute_loss
        return trainer

    sft.build_trainer = with_trl_loss if trl_loss else build
    try:
        result = sft.train_model(config, force=True)
    finally:
        sft.build_trainer = build
    return result.summary["num_tokens"], result.summary["train_seconds"]


ARMS: dict[str, tuple[str, Callable[[Path, int, Path], tuple[float, float]]]] = {
    "plain": ("plain SFTTrainer (fp32, padded)", lambda base, steps, out: plain_sft(base, steps, out)),
    "tuneship": ("tuneship train", lambda base, steps, out: tuneship_train(steps, out)),
    "trl-loss": ("tuneship train, TRL's loss", lambda base, steps, out: tuneship_train(steps, out, True)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--rounds", type=int, default=1, help="run the arms N times, alternating order")
    args = parser.parse_args()
    from tuneship.models import resolve_base

    base = resolve_base("default")
    import torch
    from transformers import AutoModelForCausalLM

    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base.path).parameters())
    peaks = {"bf16": matmul_peak("bfloat16"), "fp32": matmul_peak("float32")}
    totals = {arm: [0.0, 0.0] for arm in args.arms}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for arm in args.arms if round_ % 2 == 0 else reversed(args.arms):
                tokens, seconds = ARMS[arm][1](base.path, args.steps, Path(tmp) / f"{arm}-{round_}")
                totals[arm][0] += tokens
                totals[arm][1] += seconds
    print(
        f"\nmachine: {torch.get_num_threads()} threads; matmul peak bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, "
        f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s; model {params / 1e6:.1f}M parameters; "
        f"{args.steps} steps each, {args.rounds} round(s)"
    )
    rates = {}
    for arm, (tokens, seconds) in totals.items():
        rates[arm] = tokens / seconds
        print(
            f"{ARMS[arm][0]:34s} {tokens:8.0f} tokens in {seconds:6.1f}s = {rates[arm]:7.1f} tokens/s; "
            f"MFU {mfu(params, rates[arm], peaks['bf16']):.1%} of bf16 peak, "
            f"{mfu(params, rates[arm], peaks['fp32']):.1%} of fp32 peak"
        )
    first = args.arms[0]
    for arm in args.arms[1:]:
        print(f"ratio {arm} / {first}: {rates[arm] / rates[first]:.2f}x tokens/s")


if __name__ == "__main__":
    main()
