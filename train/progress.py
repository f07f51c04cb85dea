"""One progress display for a training run: step / total, loss, tokens per second, time left.

It replaces the Trainer's tqdm bar and its printed log dictionaries (``disable_tqdm=True``);
the libraries' own bars are off while training runs (:func:`tuneship.logs.library_output`).
Under ``torchrun`` only the first process shows it. Drawn on stderr; where stderr is no
terminal (CI, a pipe, a job's log file) there is no redrawing: one plain line per Trainer log
event (every ``logging_steps``) with step, loss, rate and time left, then the final state.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback


class RichProgress(TrainerCallback):  # type: ignore[misc]
    """A rich progress bar fed by the Trainer's events (add it after :class:`MetricsWriter`,
    which puts ``tokens_per_second`` into the logs this reads)."""

    def __init__(self, description: str = "training") -> None:
        self.description = description
        self.progress: Any = None
        self.task: Any = None
        self.stats: dict[str, str] = {}
        self.plain = False  # no terminal: print a line per log event instead of redrawing
        self.started = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.progress is not None:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        if not console.is_terminal:  # a log file or CI: one wide final line, not 80 columns
            console = Console(stderr=True, width=160)
            self.plain = True
        self.started = time.monotonic()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
        )
        self.task = self.progress.add_task(
            self.description, total=state.max_steps, completed=state.global_step, stats=""
        )
        self.progress.start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.stats["loss"] = f"loss {logs['loss']:.3f}"
        if "eval_loss" in logs:
            self.stats["eval"] = f"held-out {logs['eval_loss']:.3f}"
        if "rewards/accuracies" in logs:  # DPO: against the reference
            self.stats["reward"] = f"reward acc {logs['rewards/accuracies']:.2f}"
        if "eval_preference_accuracy" in logs:
            self.stats["preference"] = f"held-out pref acc {logs['eval_preference_accuracy']:.2f}"
        if "tokens_per_second" in logs:
            self.stats["rate"] = f"{logs['tokens_per_second']:.0f} tokens/s"
        self.progress.update(self.task, stats=", ".join(self.stats.values()))
        if self.plain and state.global_step < state.max_steps:
            self.progress.console.print(self._line(state), highlight=False)

    def _line(self, state: Any) -> str:
        """``training 12/60 (20%), loss 0.812, 140 tokens/s, 1m05s elapsed, eta 4m20s``."""
        elapsed = time.monotonic() - self.started
        done = max(state.global_step, 1)
        left = elapsed / done * (state.max_steps - state.global_step)
        stats = "".join(f", {v}" for v in self.stats.values())
        return (
            f"{self.description} {state.global_step}/{state.max_steps} "
            f"({state.global_step / max(state.max_steps, 1):.0%}){stats}, "
            f"{_duration(elapsed)} elapsed, eta {_duration(left)}"
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop drawing (also after a failed run, where the Trainer sends no end event)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
