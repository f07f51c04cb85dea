"""Training settings: one pydantic model, every field with a default and a one-line description.

tuneship train --config train/configs/demo.yaml --lr 1e-3     # YAML, then flags
TrainConfig(data="train.jsonl", method="qlora")               # checked here too
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneship.config import Settings, refuse
from tuneship.train.data import DataFormat

Method = Literal["lora", "dora", "qlora", "full", "prompt-tuning", "dpo"]
# TRL 1.16's DPO losses (DPOConfig.loss_type), less 'exo_pair', which needs label smoothing > 0.
DPOLoss = Literal[
    "sigmoid", "hinge", "ipo", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
]  # fmt: skip


# Peak learning rate of a LoRA-family run unless set. Measured on the default model, 96 rows of
# two tasks, 3 epochs (bench/train_quality.py, README "Training defaults"): held-out exact match
# 0.52 / 0.88 at 1e-3 against 0.25 / 0.92 at 5e-4 and 0.17 / 0.73 at 2e-4.
LORA_LEARNING_RATE = 1e-3
OTHER_LEARNING_RATE = 2e-4  # full, prompt tuning, dpo: not re-measured


def default_learning_rate(method: str) -> float:
    """The peak learning rate ``method`` trains with when none is set."""
    return LORA_LEARNING_RATE if method in ("lora", "qlora", "dora") else OTHER_LEARNING_RATE


def auto_epochs(examples: int) -> int:
    """OpenAI's rule for ``n_epochs: "auto"``: 3 epochs, raised so that ~100 examples are seen
    (at most 25), lowered past ~25,000 examples seen (at least 1).

    Measured on two tasks against one epoch (bench/train_quality.py, README "Training defaults").
    """
    if examples * 3 < 100:
        return min(25, math.ceil(100 / max(examples, 1)))
    if examples * 3 > 25_000:
        return max(1, 25_000 // examples)
    return 3


class TrainConfig(Settings):
    """Settings of one training run."""

    data: str = Field(description="training data: JSONL, JSON, CSV, Parquet file or datasets directory")
    format: DataFormat | None = Field(None, description="data format (default: the first row that fits one)")
    name: str = Field("", description="run name; output goes to RUNS_DIR/NAME (default: data file stem)")
    runs_dir: str = Field("runs", description="directory that holds runs")
    base: str = Field("default", description="base model: 'default', a local HF directory or a hub id")
    chat_template: str = Field("", description="Jinja chat template file (default: the base model's own)")
    loss_on: Literal["assistant", "all"] = Field(
        "assistant", description="tokens that carry loss: the answers only, or every token"
    )
    method: Method = Field(
        "lora",
        description="dora is served merged only; qlora trains on a 4-bit NF4 base; "
        "dpo trains a LoRA on preference pairs",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on the LoRA input (each one costs a random mask per layer)"
    )
    target_modules: str = Field(
        "all-linear", description="modules to adapt: 'all-linear' or comma-separated names"
    )
    beta: float = Field(
        0.1, gt=0, description="dpo: how far from the reference the adapter may move (higher: less)"
    )
    loss_type: DPOLoss = Field(
        "sigmoid", description="dpo: TRL's preference loss (sigmoid is the DPO paper's)"
    )
    init_adapter: str = Field(
        "",
        description="dpo: start from this run's (or adapter directory's) LoRA, which is also the reference "
        "(default: a new LoRA on the base)",
    )
    num_virtual_tokens: int = Field(20, ge=1, description="prompt tuning: number of virtual tokens")
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="peak learning rate (cosine schedule, 5% warm-up); default: 1e-3 for lora, qlora "
        "and dora (measured: README 'Training defaults'), 2e-4 for the other methods",
    )
    max_steps: int = Field(-1, ge=-1, description="optimizer steps; -1 means use epochs")
    epochs: float | Literal["auto"] = Field(
        "auto",
        description="passes over the data when max_steps is -1; auto: 3, more for a small file so "
        "that ~100 examples are seen, fewer past ~25,000 (OpenAI's rule)",
    )
    batch_size: int = Field(
        8, ge=1, description="sequences per device per step (packed sequences when packing)"
    )
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_length: int = Field(512, ge=8, description="maximum tokens per example (longer rows are invalid)")
    gradient_checkpointing: bool | None = Field(
        None,
        description="recompute activations in backward: less memory, ~25% slower (default: on for "
        "qlora, as in the QLoRA recipe, off otherwise)",
    )
    packing: Literal["auto", "always", "never"] = Field(
        "auto", description="pack examples into sequences without cross-example attention"
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="weights and compute dtype; auto is bf16 where the hardware supports it"
    )
    seed: int = Field(42, ge=0, description="random seed")
    logging_steps: int = Field(5, ge=1, description="log metrics every N steps")
    eval_data: str = Field(
        "", description="held-out file for eval loss (default: a fraction of the training data)"
    )
    eval_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of the training rows held out for eval loss when no eval_data"
    )
    eval_max_rows: int = Field(
        64, ge=1, description="cap on held-out rows evaluated (keeps evaluation cheap)"
    )
    eval_steps: int = Field(20, ge=1, description="evaluate held-out loss every N steps")
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps (for --resume)")
    skip_invalid: bool = Field(False, description="drop invalid data rows instead of refusing to train")

    @field_validator("format", mode="before")
    @classmethod
    def _detected(cls, value: object) -> object:
        return value or None  # "" (older run records) means detected

    @field_validator("data", "eval_data", "chat_template", "init_adapter")
    @classmethod
    def _absolute(cls, value: str) -> str:
        """The run record must work from anywhere: file settings are stored absolute."""
        return str(Path(value).resolve()) if value else value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        problems = []
        if not self.data:
            problems.append("data: a training file is required (--data)")
        if self.max_steps == 0 or (self.max_steps < 0 and self.epochs != "auto" and self.epochs <= 0):
            problems.append("max_steps/epochs: nothing to train")
        if self.chat_template and not Path(self.chat_template).is_file():
            problems.append(f"chat_template: {self.chat_template} is not a file")
        if self.init_adapter and self.method != "dpo":
            problems.append("init_adapter: only --method dpo starts from an adapter")
        if self.init_adapter and not Path(self.init_adapter).is_dir():
            problems.append(f"init_adapter: {self.init_adapter} is not a directory (a run or an adapter)")
        refuse(problems)
        return self

    @property
    def peak_learning_rate(self) -> float:
        """``learning_rate``, else the method's default (:func:`default_learning_rate`)."""
        return self.learning_rate if self.learning_rate is not None else default_learning_rate(self.method)

    @property
    def recomputes_activations(self) -> bool:
        """Gradient checkpointing: as set, else on for qlora (there the peak is activations)."""
        if self.gradient_checkpointing is None:
            return self.method == "qlora"
        return self.gradient_checkpointing

    def epochs_for(self, examples: int) -> float:
        """Passes over ``examples`` training rows (or pairs): ``epochs``, or :func:`auto_epochs`."""
        return auto_epochs(examples) if self.epochs == "auto" else self.epochs

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / (self.name or Path(self.data).stem)
