"""Training metrics: tokens/second on the progress display, metrics.jsonl, and a loss plot."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class MetricsWriter(TrainerCallback):  # type: ignore[misc]
    """Add tokens/second to every training log entry and append every entry to metrics.jsonl.

    The rate is over the tokens the Trainer counted since the previous entry
    (``num_input_tokens_seen``). Runs before the progress callback, so the rate shows there too.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: tuple[float, float] | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        now = time.perf_counter()
        tokens = logs.get("num_input_tokens_seen")
        if tokens is not None and "loss" in logs:  # a training entry, not a held-out or final one
            if self.last is not None and now > self.last[0]:
                logs["tokens_per_second"] = round((tokens - self.last[1]) / (now - self.last[0]), 1)
            self.last = (now, tokens)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last = None


def read_metrics(path: Path) -> list[dict]:
    """The entries of a metrics.jsonl (none when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_loss_plot(metrics: Path, out: Path) -> Path | None:
    """Train and held-out loss against steps, as a PNG at ``out``; None when nothing was logged.

    A DPO run gets a second panel: reward accuracy and margin (train and held-out, against the
    reference) and the held-out preference accuracy (:mod:`tuneship.train.preference_trainer`).
    """
    rows = read_metrics(metrics)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    held_out = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    preference = any("rewards/accuracies" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if preference else 1, figsize=(11 if preference else 6, 3.5), dpi=100)
    ax = axes[0] if preference else axes
    ax.plot(*zip(*train, strict=True), label="train loss")
    if held_out:
        ax.plot(*zip(*held_out, strict=True), "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if preference:
        _plot_preference(axes[1], rows)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


# DPO's curves: (metrics key, label, line style); held-out ones are drawn with markers.
PREFERENCE_CURVES = (
    ("rewards/accuracies", "reward accuracy", "-"),
    ("eval_rewards/accuracies", "held-out reward accuracy", "o-"),
    ("eval_preference_accuracy", "held-out preference accuracy", "s-"),
    ("rewards/margins", "reward margin", "--"),
    ("eval_rewards/margins", "held-out reward margin", "o--"),
)


def _plot_preference(ax: Any, rows: list[dict]) -> None:
    for key, label, style in PREFERENCE_CURVES:
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy / margin")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
