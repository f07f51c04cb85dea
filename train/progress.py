"""One progress display for a training run: step / total, loss, tokens per second, time left.

It replaces the Trainer's tqdm bar and its printed log dictionaries (``disable_tqdm=True``);
the libraries' own bars are off while training runs (:func:`tuneship.logs.library_output`).
Under ``torchrun`` only the first process shows it. Drawn on stderr; where stderr is no
terminal (CI, a pipe) rich prints the final state once instead of redrawing.
"""

from __future__ import annotations

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

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop drawing (also after a failed run, where the Trainer sends no end event)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
