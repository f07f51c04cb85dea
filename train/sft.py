"""Training with TRL: check data -> render tokens -> load base -> train -> save atomically.

    tuneship train --data examples/tickets/train.jsonl --name tickets

writes ``runs/NAME/``: ``adapter/`` (PEFT; ``model/`` for full fine-tuning),
``run.yaml`` (resolved config and lineage), ``metrics.jsonl`` and ``loss.png``,
``tensorboard/``, ``chat_template.jinja`` (the template the examples were rendered
with), ``train.log`` (the libraries' warnings and messages) and ``checkpoints/`` (for
--resume). The console gets tuneship's messages (logging) and one progress display. Runs
unchanged under ``torchrun`` / ``accelerate launch`` (data-parallel; gloo on CPU), where
only the first process reports.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.artifacts import (
    ADAPTER_DIR,
    CHAT_TEMPLATE,
    CHECKPOINTS_DIR,
    LOSS_PLOT,
    METRICS,
    MODEL_DIR,
    RUN_CONFIG,
    TRAIN_LOG,
    atomic_dir,
    library_versions,
    sha256_file,
    write_yaml,
)
from tuneship.chat import end_of_turn_warning, resolve_chat_template, template_sha256
from tuneship.errors import ArtifactError
from tuneship.lineage import DataRecord, Lineage, write_lineage
from tuneship.logs import library_output
from tuneship.models import ResolvedBase, resolve_base
from tuneship.train.config import TrainConfig
from tuneship.train.data import Dataset, load_dataset
from tuneship.train.metrics import MetricsWriter, write_loss_plot
from tuneship.train.packing import padding_fraction, use_packing
from tuneship.train.progress import RichProgress
from tuneship.train.render import Rendered, render_dataset

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path  # the PEFT adapter, or the full model directory for method "full"
    summary: dict


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def say(message: str, level: int = logging.INFO) -> None:
    """Log once per job, not once per data-parallel process."""
    if is_main_process():
        log.log(level, message)


def use_bf16(precision: str) -> bool:
    import torch

    if precision != "auto":
        return precision == "bf16"
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.cpu._is_avx512_bf16_supported())


def prepare_run_dir(config: TrainConfig, force: bool, resume: bool) -> tuple[Path, bool]:
    """Refuse to clobber a finished run; returns the run dir and whether a checkpoint exists."""
    run_dir = config.run_dir
    output = run_dir / (MODEL_DIR if config.method == "full" else ADAPTER_DIR)
    if output.exists() and not force:
        raise ArtifactError(f"{run_dir} already holds a trained {output.name}; pass --force to retrain")
    has_checkpoint = latest_checkpoint(run_dir) is not None
    if resume and not has_checkpoint:
        raise ArtifactError(f"{run_dir} has no checkpoint to resume from")
    if has_checkpoint and not resume and not force:
        raise ArtifactError(f"{run_dir} has checkpoints from an interrupted run; pass --resume or --force")
    if force and not resume and is_main_process():
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, has_checkpoint


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (its trainer state is written last); a half-written one is skipped."""
    complete = [
        p for p in (run_dir / CHECKPOINTS_DIR).glob("checkpoint-*") if (p / "trainer_state.json").is_file()
    ]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def load_tokenizer(base: ResolvedBase, template_file: str) -> tuple[Any, str]:
    """The base's tokenizer with the run's chat template set on it (tuneship.chat resolves it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    template = resolve_chat_template(tokenizer, template_file or None)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, template


def held_out(config: TrainConfig, rows: list[Rendered], tokenizer: Any, template: str) -> tuple[list, list]:
    """(train rows, eval rows): a separate file, or a seeded fraction of the training rows."""
    if config.eval_data:
        data = load_dataset(config.eval_data, config.format or None, config.skip_invalid)
        eval_rows, _ = render_dataset(
            data, tokenizer, config.max_length, template, config.loss_on, config.skip_invalid
        )
        return rows, eval_rows[: config.eval_max_rows]
    if config.eval_fraction <= 0:
        return rows, []
    shuffled = rows[:]
    random.Random(config.seed).shuffle(shuffled)
    n_eval = max(1, int(len(rows) * config.eval_fraction))
    return shuffled[n_eval:], shuffled[:n_eval][: config.eval_max_rows]


def load_model(config: TrainConfig, base: ResolvedBase, bf16: bool) -> tuple[Any, Any]:
    """The base model and the PEFT config for the chosen method (None for full fine-tuning)."""
    import torch
    from peft import LoraConfig, PromptTuningConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if config.method == "qlora":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        )
        device_map = None if torch.cuda.is_available() else {"": "cpu"}
        model = AutoModelForCausalLM.from_pretrained(
            base.path, quantization_config=quantization, device_map=device_map
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        # Adapters train in fp32 on a frozen base held in bf16 (no per-step casting, as autocast
        # would do); full fine-tuning keeps fp32 master weights and uses autocast instead.
        frozen_bf16 = bf16 and config.method != "full"
        model = AutoModelForCausalLM.from_pretrained(
            base.path, dtype=torch.bfloat16 if frozen_bf16 else torch.float32
        )
    if config.method == "full":
        return model, None
    if config.method == "prompt-tuning":
        return model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=config.num_virtual_tokens)
    if config.method == "dora":
        say("vLLM cannot serve DoRA adapters; export a merged model to serve this run.", logging.WARNING)
    targets: str | list[str] = config.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in config.target_modules.split(",") if t.strip()]
    return model, LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        use_dora=config.method == "dora",
    )


def build_trainer(
    config: TrainConfig,
    run_dir: Path,
    model: Any,
    peft_config: Any,
    tokenizer: Any,
    train_rows: list[Rendered],
    eval_rows: list[Rendered],
    bf16: bool,
) -> Any:
    """The trainer: TRL's SFTTrainer with the sparse loss, progress display and metrics file."""
    import datasets
    import torch
    from transformers import PrinterCallback
    from trl import SFTConfig

    from tuneship.train.trainer import SparseLossSFTTrainer

    def to_dataset(rows: list[Rendered]) -> Any:
        return datasets.Dataset.from_dict(
            {"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]}
        )

    packing = use_packing(config, [len(r.input_ids) for r in train_rows])
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    args = SFTConfig(
        output_dir=str(run_dir / CHECKPOINTS_DIR),
        max_steps=config.max_steps,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=config.eval_steps,
        save_steps=config.save_steps,
        save_total_limit=2,
        max_length=config.max_length,
        packing=packing,
        gradient_checkpointing=config.gradient_checkpointing,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16 and config.method in ("full", "qlora"),  # autocast; adapters on a bf16 base need none
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False,  # every adapter parameter takes part in each step
        report_to=_reporters(),
        disable_tqdm=True,  # RichProgress draws the one bar
        # The Trainer's own count: padding-free packed rows hold no padding, padded ones are masked.
        include_num_input_tokens_seen="all" if packing else "non_padding",
    )
    trainer = SparseLossSFTTrainer(
        sparse_loss=config.method != "prompt-tuning",  # virtual tokens shift the positions
        model=model,
        args=args,
        train_dataset=to_dataset(train_rows),
        eval_dataset=to_dataset(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[MetricsWriter(run_dir / METRICS), RichProgress()],  # in this order: see RichProgress
    )
    trainer.remove_callback(PrinterCallback)  # with tqdm off it would print every log dict
    return trainer


def _reporters() -> list[str]:
    import importlib.util

    return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []


def train_model(config: TrainConfig, force: bool = False, resume: bool = False) -> RunResult:
    """Check the data, train, and write the run directory; returns where it went.

    The libraries' warnings and messages go to ``RUN_DIR/train.log``, not the console. Raises
    DataError for unusable data, ArtifactError for a run directory that must not be replaced,
    ModelError for a base model that cannot be found.
    """
    data = load_dataset(config.data, config.format or None, config.skip_invalid)
    run_dir, _ = prepare_run_dir(config, force, resume)
    with library_output(run_dir / TRAIN_LOG):
        say(f"Data: {data.path} (format: {data.format}, {len(data.examples)} examples)")
        return _train(config, data, run_dir, resume)


def _train(config: TrainConfig, data: Dataset, run_dir: Path, resume: bool) -> RunResult:
    base = resolve_base(config.base)
    tokenizer, template = load_tokenizer(base, config.chat_template)
    warning = data.format != "text" and end_of_turn_warning(tokenizer, base.path, template, base.name)
    if warning:  # conversations only: text rows end with the end-of-sequence token
        say(warning, logging.WARNING)
    rows, stats = render_dataset(
        data, tokenizer, config.max_length, template, config.loss_on, config.skip_invalid
    )
    train_rows, eval_rows = held_out(config, rows, tokenizer, template)
    say(f"Base: {base.name} ({base.path}); method: {config.method}")
    say(
        f"Tokens: {stats.tokens} in {stats.examples} examples, {stats.trained_tokens} carry loss; "
        f"{len(train_rows)} train / {len(eval_rows)} held-out rows"
    )
    bf16 = use_bf16(config.precision)
    model, peft_config = load_model(config, base, bf16)
    trainer = build_trainer(config, run_dir, model, peft_config, tokenizer, train_rows, eval_rows, bf16)
    padding = padding_fraction(trainer, trainer.args.packing)
    say(
        f"Batches: {'packed (padding-free)' if trainer.args.packing else 'padded'}, "
        f"padding {padding:.1%}, precision {'bf16' if bf16 else 'fp32'}"
    )
    started = time.time()
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint:
        say(f"Resuming from {checkpoint}")
    try:
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, RichProgress):
                callback.close()  # a failed run sends no end event
    evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    summary = {
        "steps": trainer.state.global_step,
        "train_loss": round(float(output.training_loss), 4),
        "eval_loss": round(evals[-1], 4) if evals else None,
        "train_seconds": round(time.time() - started, 1),
        "num_tokens": int(trainer.state.num_input_tokens_seen) or None,
        "precision": "bf16" if bf16 else "fp32",
        "padding_fraction": round(padding, 4),
        "packing": bool(trainer.args.packing),
    }
    lineage = run_lineage(config, base, data, template)
    output_dir = run_dir / (MODEL_DIR if config.method == "full" else ADAPTER_DIR)
    # Every process takes part in gathering the weights (FSDP shards them); one writes them.
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model)
        save_run(model, state_dict, tokenizer, template, config, run_dir, output_dir, lineage, summary)
    trainer.accelerator.wait_for_everyone()  # no process reports success before the adapter exists
    return RunResult(run_dir, output_dir, summary)


def run_lineage(config: TrainConfig, base: ResolvedBase, data: Dataset, template: str) -> Lineage:
    """The lineage record of a run: base, data, template, method and library versions."""
    return Lineage(
        kind="full-model" if config.method == "full" else "adapter",
        method=config.method,
        base_model=base.identity(),
        data=DataRecord(
            path=str(data.path),
            sha256=_data_hash(data.path),
            format=data.format,
            examples=len(data.examples),
            skipped=len(data.problems),
        ),
        chat_template_sha256=template_sha256(template),
        loss_on=config.loss_on,
        seed=config.seed,
        versions=library_versions(),
    )


def save_run(
    model: Any,
    state_dict: dict,
    tokenizer: Any,
    template: str,
    config: TrainConfig,
    run_dir: Path,
    output_dir: Path,
    lineage: Lineage,
    summary: dict,
) -> None:
    """Write the adapter (or model) atomically, then the run record and the loss plot."""
    with atomic_dir(output_dir, force=True) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        if config.method == "full":
            tokenizer.save_pretrained(tmp)
        write_lineage(tmp, lineage)
        (tmp / CHAT_TEMPLATE).write_text(template)  # travels with the adapter (registry, export)
    (run_dir / CHAT_TEMPLATE).write_text(template)
    record = {"config": config.model_dump(), "lineage": lineage.model_dump(mode="json", exclude_none=True)}
    write_yaml(run_dir / RUN_CONFIG, {**record, "result": summary})
    write_loss_plot(run_dir / METRICS, run_dir / LOSS_PLOT)


def _data_hash(path: Path) -> str:
    from tuneship.artifacts import hash_dir

    return hash_dir(path) if path.is_dir() else sha256_file(path)
