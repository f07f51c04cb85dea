"""What a running job's run directory says: metrics lines become events, checkpoints become records.

Training appends one JSON line per log entry to ``RUN/metrics.jsonl`` and writes complete
checkpoints as ``RUN/checkpoints/checkpoint-N`` (``trainer_state.json`` last); this reads both as
they grow, and writes the metrics CSV that OpenAI attaches to a finished job as a result file.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

from tuneship.artifacts import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CHAT_TEMPLATE,
    CHECKPOINTS_DIR,
    METRICS,
    atomic_dir,
)

# OpenAI's metrics CSV columns, then the ones training logs beyond them.
CSV_COLUMNS = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "learning_rate",
    "tokens_per_second",
    "num_tokens",
)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run has a complete checkpoint to resume from (``tuneship train --resume``)."""
    return any((p / "trainer_state.json").is_file() for p in (run_dir / CHECKPOINTS_DIR).glob("checkpoint-*"))


def last_checkpoint_step(run_dir: Path) -> int | None:
    """The step of the newest complete checkpoint (what ``--resume`` continues from), if any."""
    steps = [
        int(p.name.rsplit("-", 1)[1])
        for p in (run_dir / CHECKPOINTS_DIR).glob("checkpoint-*")
        if p.name.rsplit("-", 1)[1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(steps, default=None)


def keep_adapter(checkpoint: Path, into: Path) -> Path | None:
    """Copy a checkpoint's adapter (config, weights, chat template; no optimizer state) to ``into``.

    Training keeps only its last two checkpoints (it deletes older ones as it saves), so a
    checkpoint that is to be served later is copied as soon as it is complete. Returns ``into``,
    or None when the checkpoint holds no adapter (full fine-tuning) or is gone already.
    """
    if not (checkpoint / ADAPTER_CONFIG).is_file():
        return None
    try:
        with atomic_dir(into, force=True) as tmp:
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CHAT_TEMPLATE):
                if (checkpoint / name).is_file():
                    shutil.copyfile(checkpoint / name, tmp / name)
    except FileNotFoundError:
        return None  # deleted by training's rotation while being copied
    return into


def train_metrics(row: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics event data of a training log entry (None for other entries)."""
    if "loss" not in row:
        return None
    data = {"step": row["step"], "train_loss": row["loss"]}
    for source, name in (
        ("mean_token_accuracy", "train_mean_token_accuracy"),
        ("learning_rate", "learning_rate"),
        ("tokens_per_second", "tokens_per_second"),
        ("num_input_tokens_seen", "num_tokens"),
        ("rewards/accuracies", "train_reward_accuracy"),
    ):
        if row.get(source) is not None:
            data[name] = row[source]
    return data


def valid_metrics(row: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics event data of a held-out evaluation entry (None for other entries)."""
    if "eval_loss" not in row:
        return None
    data = {"step": row["step"], "valid_loss": row["eval_loss"]}
    if row.get("eval_mean_token_accuracy") is not None:
        data["valid_mean_token_accuracy"] = row["eval_mean_token_accuracy"]
    return data


class RunWatcher:
    """Reads a run directory incrementally: new metrics entries, new complete checkpoints."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.offset = 0
        self.rows: list[dict[str, Any]] = []
        self.seen_checkpoints: set[int] = set()
        self.seen_entries: set[tuple] = set()  # (step, kind): a resumed run logs some steps again

    def new_rows(self) -> list[dict[str, Any]]:
        """Complete metrics lines written since the last call, less entries of steps seen before."""
        path = self.run_dir / METRICS
        try:
            with path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        rows = []
        for line in complete.splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        self.rows += rows
        fresh = []
        for row in rows:
            entry = (row.get("step"), "loss" in row, "eval_loss" in row)
            if entry not in self.seen_entries:
                self.seen_entries.add(entry)
                fresh.append(row)
        return fresh

    def new_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, directory) of complete checkpoints not reported before, in step order."""
        found = []
        for path in (self.run_dir / CHECKPOINTS_DIR).glob("checkpoint-*"):
            try:
                step = int(path.name.rsplit("-", 1)[1])
            except ValueError:
                continue
            if step not in self.seen_checkpoints and (path / "trainer_state.json").is_file():
                self.seen_checkpoints.add(step)
                found.append((step, path))
        return sorted(found)

    def metrics_at(self, step: int) -> dict[str, Any]:
        """The newest training and held-out metrics at or before ``step`` (OpenAI's checkpoint metrics)."""
        metrics: dict[str, Any] = {}
        for row in self.rows:
            if row.get("step", 0) > step:
                continue
            for data in (train_metrics(row), valid_metrics(row)):
                if data:
                    metrics.update({k: v for k, v in data.items() if k in CSV_COLUMNS})
        metrics.pop("learning_rate", None)
        metrics.pop("tokens_per_second", None)
        metrics.pop("num_tokens", None)
        metrics["step"] = step
        return metrics

    def metrics_csv(self) -> str:
        """One row per logged step: OpenAI's columns (train and held-out) and training's extras."""
        by_step: dict[int, dict[str, Any]] = {}
        for row in self.rows:
            for data in (train_metrics(row), valid_metrics(row)):
                if data:
                    by_step.setdefault(data["step"], {}).update(data)
        out = io.StringIO()
        writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for step in sorted(by_step):
            writer.writerow(by_step[step])
        return out.getvalue()

    def trained_tokens(self) -> int | None:
        """Tokens the run trained on, from its last log entry that counts them."""
        counts = [row["num_input_tokens_seen"] for row in self.rows if row.get("num_input_tokens_seen")]
        return int(counts[-1]) if counts else None
