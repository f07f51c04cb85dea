"""Preference training with TRL's DPOTrainer: pairs -> a LoRA adapter that prefers the chosen answers.

    tuneship train --data pairs.jsonl --method dpo --name polite [--init-adapter runs/sft] [--beta 0.1]

The pairs are rendered by tuneship (:func:`tuneship.train.render.render_pair`, the one chat
template). The policy is a new LoRA on the base, whose reference is the base itself (TRL disables
the adapter), or, with ``--init-adapter``, the starting adapter trained further, whose reference is
that starting point (TRL keeps a frozen copy of it as the ``ref`` adapter; it is dropped before
saving). Either way the result is one LoRA of the base: it exports, serves and A/Bs as any adapter.
Held-out pairs are evaluated before the first step and every ``eval_steps``: TRL's reward accuracy
and margin (against the reference) and the preference accuracy (:mod:`preference_trainer`), all in
``metrics.jsonl`` and the loss plot. The run directory, resume and saving are :mod:`tuneship.train.run`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tuneship.adapters import adapter_chat_template, adapter_hash, locate_adapter
from tuneship.artifacts import METRICS
from tuneship.chat import end_of_turn_warning
from tuneship.errors import DataError
from tuneship.lineage import AdapterOrigin, read_lineage
from tuneship.models import ResolvedBase, base_of_adapter, resolve_base
from tuneship.train.config import TrainConfig
from tuneship.train.data import Dataset
from tuneship.train.metrics import MetricsWriter, read_metrics
from tuneship.train.packing import padding_fraction
from tuneship.train.progress import RichProgress
from tuneship.train.render import RenderedPair, render_dataset
from tuneship.train.run import (
    RunResult,
    finish_run,
    held_out,
    load_model,
    load_tokenizer,
    run_lineage,
    run_trainer,
    say,
    schedule_record,
    trainer_arguments,
    use_bf16,
)


def train_dpo(config: TrainConfig, data: Dataset, run_dir: Path, resume: bool) -> RunResult:
    """Train ``config`` (method dpo) on checked preference pairs into ``run_dir``; returns where it went.

    Raises DataError for pairs that do not render or fit, ArtifactError for a starting adapter that
    is missing or belongs to another base, ModelError for a base that cannot be found.
    """
    start = locate_adapter(config.init_adapter) if config.init_adapter else None
    base, template_file = _starting_point(config, start)
    tokenizer, template = load_tokenizer(base, template_file)
    warning = end_of_turn_warning(tokenizer, base.path, template, base.name)
    if warning:
        say(warning, logging.WARNING)
    pairs, stats = render_dataset(
        data, tokenizer, config.max_length, template, "assistant", config.skip_invalid
    )
    train_pairs, eval_pairs = held_out(config, pairs, tokenizer, template)
    if not all(isinstance(pair, RenderedPair) for pair in eval_pairs):
        raise DataError(f"{config.eval_data}: held-out data for --method dpo must be preference pairs too")
    say(f"Base: {base.name} ({base.path}); method: dpo (beta {config.beta}, loss {config.loss_type})")
    say(
        f"Tokens: {stats.tokens} in {stats.examples} pairs, {stats.trained_tokens} in their answers; "
        f"{len(train_pairs)} train / {len(eval_pairs)} held-out pairs"
    )
    bf16 = use_bf16(config.precision)
    model, peft_config = _load_policy(config, base, start, bf16)
    trainer = build_dpo_trainer(config, run_dir, model, peft_config, tokenizer, train_pairs, eval_pairs)
    padding = padding_fraction(trainer, packing=False)
    say(f"Batches: padded, padding {padding:.1%}, precision {'bf16' if bf16 else 'fp32'}")
    if eval_pairs and not resume:
        trainer.evaluate()  # the starting point, logged at step 0
    output, seconds = run_trainer(trainer, run_dir, resume, config.epochs)
    if eval_pairs and trainer.state.global_step % config.eval_steps:
        trainer.evaluate()  # the end point, when the last step was no evaluation step
    summary = {
        "steps": trainer.state.global_step,
        **schedule_record(trainer),
        "train_loss": round(float(output.training_loss), 4),
        "train_seconds": round(seconds, 1),
        "num_tokens": int(trainer.state.num_input_tokens_seen) or None,
        "precision": "bf16" if bf16 else "fp32",
        "padding_fraction": round(padding, 4),
        "packing": False,
        **held_out_summary(run_dir / METRICS),
    }
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in policy.peft_config:
        policy.delete_adapter("ref")  # TRL's frozen copy of the starting adapter: the reference only
    origin = _origin(start)
    lineage = run_lineage(config, base, data, template, origin)
    return finish_run(trainer, tokenizer, template, config, run_dir, lineage, summary)


def _starting_point(config: TrainConfig, start: Path | None) -> tuple[ResolvedBase, str]:
    """The base and the chat-template file: the starting adapter's own unless given."""
    if start is None:
        return resolve_base(config.base), config.chat_template
    base = base_of_adapter(start, None if config.base == "default" else config.base)
    trained_with = adapter_chat_template(start).file
    template = config.chat_template or (str(trained_with) if trained_with else "")
    say(f"Starting from {start} (the reference); its LoRA settings (rank, alpha, targets) apply")
    return base, template


def _origin(start: Path | None) -> AdapterOrigin | None:
    if start is None:
        return None
    lineage = read_lineage(start)
    return AdapterOrigin(
        path=str(start), sha256=adapter_hash(start), method=lineage.method if lineage else None
    )


def _load_policy(config: TrainConfig, base: ResolvedBase, start: Path | None, bf16: bool) -> tuple[Any, Any]:
    """The base with a new LoRA config, or with the starting adapter loaded trainable (no config)."""
    model, lora = load_model(config, base, bf16)
    if start is None:
        return model, lora
    from peft import PeftModel

    return PeftModel.from_pretrained(model, start, is_trainable=True), None


def build_dpo_trainer(
    config: TrainConfig,
    run_dir: Path,
    model: Any,
    peft_config: Any,
    tokenizer: Any,
    train_pairs: list[RenderedPair],
    eval_pairs: list[RenderedPair],
) -> Any:
    """TRL's DPOTrainer (:class:`PreferenceTrainer`) with the progress display and the metrics file."""
    import datasets
    from transformers import PrinterCallback
    from trl import DPOConfig

    from tuneship.train.preference_trainer import PreferenceTrainer

    def to_dataset(pairs: list[RenderedPair]) -> Any:
        columns = ("prompt_ids", "chosen_ids", "rejected_ids")
        return datasets.Dataset.from_dict({c: [getattr(p, c) for p in pairs] for c in columns})

    args = DPOConfig(
        **trainer_arguments(config, run_dir, evaluate=bool(eval_pairs), examples=len(train_pairs)),
        beta=config.beta,
        loss_type=[config.loss_type],
        bf16=False,  # the adapter trains in fp32 on the (possibly bf16) frozen base, as in SFT
        include_num_input_tokens_seen="non_padding",
    )
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(train_pairs),
        eval_dataset=to_dataset(eval_pairs) if eval_pairs else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[MetricsWriter(run_dir / METRICS), RichProgress()],  # in this order: see RichProgress
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def held_out_summary(metrics: Path) -> dict[str, float | None]:
    """Held-out numbers of a DPO run from its metrics file: the first evaluation (the starting point)
    and the last. Reward accuracy and margin are against the reference (0 at the start)."""
    evals = [m for m in read_metrics(metrics) if "eval_preference_accuracy" in m]
    first, last = (evals[0], evals[-1]) if evals else ({}, {})

    def value(entry: dict, key: str) -> float | None:
        return round(float(entry[key]), 4) if key in entry else None

    return {
        "eval_loss": value(last, "eval_loss"),
        "preference_accuracy_start": value(first, "eval_preference_accuracy"),
        "preference_accuracy": value(last, "eval_preference_accuracy"),
        "reward_accuracy": value(last, "eval_rewards/accuracies"),
        "reward_margin": value(last, "eval_rewards/margins"),
    }
