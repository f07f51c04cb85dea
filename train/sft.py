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
from pathlib import Path
from typing import Any

from tuneship.artifacts import METRICS, TRAIN_LOG
from tuneship.chat import end_of_turn_warning
from tuneship.errors import DataError
from tuneship.logs import library_output
from tuneship.models import resolve_base
from tuneship.train.config import TrainConfig
from tuneship.train.data import Dataset, load_dataset
from tuneship.train.metrics import MetricsWriter
from tuneship.train.packing import padding_fraction, use_packing
from tuneship.train.preference import PREFERENCE_FORMATS
from tuneship.train.progress import RichProgress
from tuneship.train.render import Rendered, render_dataset
from tuneship.train.run import (
    RunResult,
    finish_run,
    held_out,
    is_main_process,
    load_model,
    load_tokenizer,
    prepare_run_dir,
    run_lineage,
    run_trainer,
    say,
    schedule_record,
    trainer_arguments,
    use_bf16,
)

__all__ = [
    "RunResult",
    "build_trainer",
    "is_main_process",
    "load_dataset",
    "load_model",
    "load_tokenizer",
    "train_model",
]

log = logging.getLogger(__name__)


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
    from transformers import PrinterCallback
    from trl import SFTConfig

    from tuneship.train.trainer import SparseLossSFTTrainer

    def to_dataset(rows: list[Rendered]) -> Any:
        return datasets.Dataset.from_dict(
            {"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]}
        )

    packing = use_packing(config, [len(r.input_ids) for r in train_rows])
    args = SFTConfig(
        **trainer_arguments(config, run_dir, evaluate=bool(eval_rows), examples=len(train_rows)),
        packing=packing,
        bf16=bf16 and config.method in ("full", "qlora"),  # autocast; adapters on a bf16 base need none
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


def train_model(config: TrainConfig, force: bool = False, resume: bool = False) -> RunResult:
    """Check the data, train, and write the run directory; returns where it went.

    The libraries' warnings and messages go to ``RUN_DIR/train.log``, not the console. Raises
    DataError for unusable data, ArtifactError for a run directory that must not be replaced,
    ModelError for a base model that cannot be found.
    """
    data = load_dataset(config.data, config.format or None, config.skip_invalid)
    check_method(config, data)
    run_dir, _ = prepare_run_dir(config, force, resume)
    with library_output(run_dir / TRAIN_LOG):
        say(f"Data: {data.path} (format: {data.format}, {len(data.examples)} examples)")
        if config.method == "dpo":
            from tuneship.train.dpo import train_dpo

            return train_dpo(config, data, run_dir, resume)
        return _train(config, data, run_dir, resume)


def check_method(config: TrainConfig, data: Dataset) -> None:
    """Preference pairs train with --method dpo, and dpo trains on nothing else (DataError)."""
    pairs = data.format in PREFERENCE_FORMATS
    if pairs and config.method != "dpo":
        raise DataError(f"{data.path}: preference pairs (format {data.format}) train with --method dpo")
    if config.method == "dpo" and not pairs:
        raise DataError(
            f"{data.path}: --method dpo trains on preference pairs "
            f"(formats {', '.join(PREFERENCE_FORMATS)}), not {data.format} rows"
        )


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
    output, seconds = run_trainer(trainer, run_dir, resume, config.epochs)
    evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    summary = {
        "steps": trainer.state.global_step,
        **schedule_record(trainer),
        "train_loss": round(float(output.training_loss), 4),
        "eval_loss": round(evals[-1], 4) if evals else None,
        "train_seconds": round(seconds, 1),
        "num_tokens": int(trainer.state.num_input_tokens_seen) or None,
        "precision": "bf16" if bf16 else "fp32",
        "padding_fraction": round(padding, 4),
        "packing": bool(trainer.args.packing),
    }
    lineage = run_lineage(config, base, data, template)
    return finish_run(trainer, tokenizer, template, config, run_dir, lineage, summary)
