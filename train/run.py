"""What every training method shares: the run directory, the base model, the run's record.

``tuneship.train.sft`` (supervised methods) and ``tuneship.train.dpo`` (preference pairs) each
build their own TRL trainer; both refuse to clobber a finished run, resume from the last
complete checkpoint, load the base with the method's adapter, show one progress display, and
write the adapter atomically with its lineage, ``run.yaml``, ``metrics.jsonl`` and ``loss.png``.
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
    atomic_dir,
    library_versions,
    sha256_file,
    write_yaml,
)
from tuneship.chat import resolve_chat_template, template_sha256
from tuneship.errors import ArtifactError
from tuneship.lineage import AdapterOrigin, DataRecord, Lineage, write_lineage
from tuneship.models import ResolvedBase, bf16_supported
from tuneship.train.config import TrainConfig
from tuneship.train.data import Dataset, load_dataset
from tuneship.train.metrics import write_loss_plot
from tuneship.train.progress import RichProgress
from tuneship.train.render import render_dataset

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
    """The ``precision`` setting as a yes/no: ``auto`` is bf16 where the hardware computes it."""
    return bf16_supported() if precision == "auto" else precision == "bf16"


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


def held_out(config: TrainConfig, rows: list[Any], tokenizer: Any, template: str) -> tuple[list, list]:
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


def _reporters() -> list[str]:
    import importlib.util

    return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []


def trainer_arguments(config: TrainConfig, run_dir: Path, evaluate: bool, examples: int) -> dict[str, Any]:
    """The Trainer arguments every method takes from the run's settings (SFTConfig, DPOConfig);
    ``examples``: the training rows (or pairs), which ``epochs: auto`` is resolved from."""
    import torch

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    return dict(
        output_dir=str(run_dir / CHECKPOINTS_DIR),
        max_steps=config.max_steps,
        num_train_epochs=config.epochs_for(examples),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.peak_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=config.eval_steps,
        save_steps=config.save_steps,
        save_total_limit=2,
        max_length=config.max_length,
        gradient_checkpointing=config.recomputes_activations,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False,  # every adapter parameter takes part in each step
        report_to=_reporters(),
        disable_tqdm=True,  # RichProgress draws the one bar
    )


def schedule(args: Any, rows: int, epochs: float | str) -> str:
    """One line on how the run trains: its length, batch, peak learning rate, recomputation."""
    if args.max_steps > 0:
        length = f"{args.max_steps} steps"
    else:
        auto = f" (auto for {rows} rows)" if epochs == "auto" else ""
        length = f"{args.num_train_epochs:g} epochs{auto}"
    checkpointing = "on" if args.gradient_checkpointing else "off"
    return (
        f"{length}, batch {args.per_device_train_batch_size}, peak learning rate "
        f"{args.learning_rate:g}, gradient checkpointing {checkpointing}"
    )


def schedule_record(trainer: Any) -> dict[str, Any]:
    """What the run trained with, for ``run.yaml``'s result: epochs done, peak learning rate,
    whether activations were recomputed (the resolved values of ``auto`` and unset settings)."""
    return {
        "epochs": round(float(trainer.state.epoch or 0), 2),
        "learning_rate": trainer.args.learning_rate,
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
    }


def run_trainer(trainer: Any, run_dir: Path, resume: bool, epochs: float | str = "auto") -> tuple[Any, float]:
    """Train (from the last complete checkpoint when resuming); returns TRL's output and the seconds.

    ``epochs`` is the setting as given (``"auto"`` or a number), for the schedule line."""
    started = time.time()
    say(f"Schedule: {schedule(trainer.args, len(trainer.train_dataset), epochs)}")
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint:
        say(f"Resuming from {checkpoint}")
    try:
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, RichProgress):
                callback.close()  # a failed run sends no end event
    return output, time.time() - started


def finish_run(
    trainer: Any,
    tokenizer: Any,
    template: str,
    config: TrainConfig,
    run_dir: Path,
    lineage: Lineage,
    summary: dict,
) -> RunResult:
    """Gather the weights (every process takes part: FSDP shards them), write them once, and wait."""
    output_dir = run_dir / (MODEL_DIR if config.method == "full" else ADAPTER_DIR)
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model)
        save_run(model, state_dict, tokenizer, template, config, run_dir, output_dir, lineage, summary)
    trainer.accelerator.wait_for_everyone()  # no process reports success before the adapter exists
    return RunResult(run_dir, output_dir, summary)


def run_lineage(
    config: TrainConfig,
    base: ResolvedBase,
    data: Dataset,
    template: str,
    init_adapter: AdapterOrigin | None = None,
) -> Lineage:
    """The lineage record of a run: base, starting adapter, data, template, method and library versions."""
    return Lineage(
        init_adapter=init_adapter,
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
