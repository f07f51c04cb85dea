"""Training settings: one dataclass, every field with a default and a one-line description."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneship.config import opt
from tuneship.train.data import FORMATS

METHODS = ("lora", "dora", "qlora", "full", "prompt-tuning")


@dataclass
class TrainConfig:
    """Settings of one training run."""

    data: str = opt("", "training data: JSONL, JSON, CSV, Parquet file or datasets directory")
    format: str = opt("", "data format (default: detected): messages, prompt-completion, alpaca, sharegpt")
    name: str = opt("", "run name; output goes to RUNS_DIR/NAME (default: data file stem)")
    runs_dir: str = opt("runs", "directory that holds runs")
    base: str = opt("default", "base model: 'default', a local HF directory or a hub id")
    chat_template: str = opt("", "Jinja chat template file (default: the base model's own)")
    loss_on: str = opt("assistant", "tokens that carry loss: 'assistant' (answers only) or 'all'")
    method: str = opt("lora", "lora, dora (merge-only), qlora (4-bit NF4 base), full, prompt-tuning")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = opt(0.0, "dropout on the LoRA input (each one costs a random mask per layer)")
    target_modules: str = opt("all-linear", "modules to adapt: 'all-linear' or comma-separated names")
    num_virtual_tokens: int = opt(20, "prompt tuning: number of virtual tokens")
    learning_rate: float = opt(2e-4, "peak learning rate (cosine schedule, 5% warm-up)")
    max_steps: int = opt(-1, "optimizer steps; -1 means use epochs")
    epochs: float = opt(1.0, "passes over the data when max_steps is -1")
    batch_size: int = opt(8, "sequences per device per step (packed sequences when packing)")
    grad_accum: int = opt(1, "gradient accumulation steps")
    max_length: int = opt(512, "maximum tokens per example (longer rows are invalid)")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward: less memory, ~30% slower")
    packing: str = opt(
        "auto", "pack examples into sequences without cross-example attention: auto, always, never"
    )
    precision: str = opt("auto", "'auto' (bf16 where supported), 'bf16' or 'fp32'")
    seed: int = opt(42, "random seed")
    logging_steps: int = opt(5, "log metrics every N steps")
    eval_data: str = opt("", "held-out file for eval loss (default: a fraction of the training data)")
    eval_fraction: float = opt(0.0, "share of the training rows held out for eval loss when no eval_data")
    eval_max_rows: int = opt(64, "cap on held-out rows evaluated (keeps evaluation cheap)")
    eval_steps: int = opt(20, "evaluate held-out loss every N steps")
    save_steps: int = opt(50, "checkpoint every N steps (for --resume)")
    skip_invalid: bool = opt(False, "drop invalid data rows instead of refusing to train")

    def check(self) -> list[str]:
        problems = []
        if not self.data:
            problems.append("data: a training file is required (--data)")
        if self.format and self.format not in FORMATS:
            problems.append(f"format: one of {', '.join(FORMATS)}")
        if self.method not in METHODS:
            problems.append(f"method: one of {', '.join(METHODS)}")
        if self.loss_on not in ("assistant", "all"):
            problems.append("loss_on: 'assistant' or 'all'")
        if self.lora_r < 1:
            problems.append("lora_r: must be >= 1")
        if self.batch_size < 1 or self.grad_accum < 1:
            problems.append("batch_size/grad_accum: must be >= 1")
        if self.max_steps == 0 or (self.max_steps < 0 and self.epochs <= 0):
            problems.append("max_steps/epochs: nothing to train")
        if self.precision not in ("auto", "bf16", "fp32"):
            problems.append("precision: one of auto, bf16, fp32")
        if not 0 <= self.lora_dropout < 1:
            problems.append("lora_dropout: must be in [0, 1)")
        if not 0 <= self.eval_fraction < 1:
            problems.append("eval_fraction: must be in [0, 1)")
        if self.packing not in ("auto", "always", "never"):
            problems.append("packing: one of auto, always, never")
        if self.max_length < 8:
            problems.append("max_length: must be >= 8")
        if self.chat_template and not Path(self.chat_template).is_file():
            problems.append(f"chat_template: {self.chat_template} is not a file")
        return problems

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / (self.name or Path(self.data).stem)
