"""LoRA fine-tuning with TRL: validate config and data -> load base -> train -> save adapter.

    tuneship train --data examples/tickets/train.jsonl --name tickets

writes ``runs/NAME/``: ``adapter/`` (PEFT, servable by vLLM), ``run.yaml`` (resolved
config and lineage), ``metrics.jsonl`` (training log) and ``checkpoints/`` (for --resume).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneship.train.data import load_dataset

from tuneship.artifacts import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    LINEAGE,
    METRICS,
    RUN_CONFIG,
    atomic_dir,
    library_versions,
    sha256_file,
    sha256_text,
    write_json,
    write_yaml,
)
from tuneship.errors import ArtifactError
from tuneship.models import resolve_base


def opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Settings of one LoRA training run."""

    data: str = opt("", "training data file (JSONL: messages or prompt/completion)")
    name: str = opt("", "run name; output goes to RUNS_DIR/NAME (default: data file stem)")
    runs_dir: str = opt("runs", "directory that holds runs")
    base: str = opt("default", "base model: 'default', a local HF directory or a hub id")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = opt(0.05, "dropout on the LoRA input")
    target_modules: str = opt("all-linear", "modules to adapt: 'all-linear' or comma-separated names")
    learning_rate: float = opt(2e-4, "peak learning rate (cosine schedule, 5% warm-up)")
    max_steps: int = opt(-1, "optimizer steps; -1 means use epochs")
    epochs: float = opt(1.0, "passes over the data when max_steps is -1")
    batch_size: int = opt(8, "examples per device per step")
    grad_accum: int = opt(1, "gradient accumulation steps")
    max_length: int = opt(512, "maximum tokens per example (longer ones are truncated)")
    precision: str = opt("auto", "'auto' (bf16 where supported), 'bf16' or 'fp32'")
    seed: int = opt(42, "random seed")
    logging_steps: int = opt(5, "log metrics every N steps")
    save_steps: int = opt(50, "checkpoint every N steps (for --resume)")
    skip_invalid: bool = opt(False, "drop invalid data rows instead of refusing to train")

    def check(self) -> list[str]:
        problems = []
        if not self.data:
            problems.append("data: a training file is required (--data)")
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
        return problems

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / (self.name or Path(self.data).stem)


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path
    summary: dict


def use_bf16(precision: str) -> bool:
    import torch

    if precision != "auto":
        return precision == "bf16"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported())


def _metrics_callback(path: Path) -> Any:
    from transformers import TrainerCallback

    class MetricsWriter(TrainerCallback):  # type: ignore[misc]
        """Append every log entry to metrics.jsonl as it happens."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs:
                with path.open("a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return MetricsWriter()


def train_lora(config: TrainConfig, force: bool = False, resume: bool = False) -> RunResult:
    """Train a LoRA adapter and write the run directory; returns where it went."""
    data = load_dataset(config.data, skip_invalid=config.skip_invalid)
    run_dir = config.run_dir
    adapter_dir = run_dir / ADAPTER_DIR
    if adapter_dir.exists() and not force:
        raise ArtifactError(f"{run_dir} already holds a trained adapter; pass --force to retrain")
    checkpoints = run_dir / CHECKPOINTS_DIR
    has_checkpoint = any(checkpoints.glob("checkpoint-*"))
    if has_checkpoint and not resume and not force:
        raise ArtifactError(f"{run_dir} has checkpoints from an interrupted run; pass --resume or --force")
    if force and not resume:
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    base = resolve_base(config.base)
    print(f"Data: {data.path} ({data.format}, {len(data.examples)} examples)")
    print(f"Base: {base.name} ({base.path})")

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    if not tokenizer.chat_template:
        raise ArtifactError(f"{base.path}: the tokenizer has no chat template")
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    bf16 = use_bf16(config.precision)
    targets: str | list[str] = config.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in config.target_modules.split(",") if t.strip()]
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
    )
    args = SFTConfig(
        output_dir=str(checkpoints),
        max_steps=config.max_steps,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=2,
        max_length=config.max_length,
        seed=config.seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        completion_only_loss=True,
        report_to="none",
        disable_tqdm=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data.examples),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_metrics_callback(run_dir / METRICS)],
    )
    started = time.time()
    output = trainer.train(resume_from_checkpoint=True if (resume and has_checkpoint) else None)
    elapsed = time.time() - started
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    summary = {
        "steps": trainer.state.global_step,
        "train_loss": round(float(output.training_loss), 4),
        "train_seconds": round(elapsed, 1),
        "num_tokens": int(tokens[-1]) if tokens else None,
        "precision": "bf16" if bf16 else "fp32",
    }
    lineage = {
        "kind": "lora-adapter",
        "base_model": base.identity(),
        "data": {
            "path": str(data.path),
            "sha256": sha256_file(data.path),
            "format": data.format,
            "examples": len(data.examples),
        },
        "chat_template_sha256": sha256_text(tokenizer.chat_template),
        "seed": config.seed,
        "versions": library_versions(),
    }
    with atomic_dir(adapter_dir, force=True) as tmp:
        trainer.model.save_pretrained(tmp)
        write_json(tmp / LINEAGE, lineage)
    write_yaml(run_dir / RUN_CONFIG, {"config": asdict(config), "lineage": lineage, "result": summary})
    return RunResult(run_dir, adapter_dir, summary)
