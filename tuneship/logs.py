"""Where messages go: tuneship's own to the console (the front doors turn that on), the
libraries' warnings and progress bars to a log file or nowhere.

Library code logs through :mod:`logging` (``logging.getLogger(__name__)``) and never prints.
``tuneship train`` shows one progress display; while a stage runs inside
:func:`library_output`, the dozen nested bars of datasets, transformers and huggingface_hub
("Tokenizing train dataset", "Loading weights", ...) are off, and their warnings (``warnings``
module and their loggers) are written to the stage's log file (``runs/NAME/train.log``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Loggers of the libraries a stage drives; "py.warnings" receives the warnings module's output.
LIBRARY_LOGGERS = (
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "torch",
    "bitsandbytes",
    "py.warnings",
)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now: rich's live displays swap it to print above themselves."""

    def emit(self, record: logging.LogRecord) -> None:
        # Assign, not setStream(): that flushes the previous stream, which a finished
        # CliRunner or rich display may already have closed.
        self.stream = sys.stderr
        super().emit(record)


class _Plain(logging.Formatter):
    """The message alone; warnings and errors say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname}: {message}"


def show_messages(level: int = logging.INFO) -> None:
    """Show tuneship's log messages on stderr (the CLI calls this once; results go to stdout)."""
    logger = logging.getLogger("tuneship")
    logger.setLevel(level)
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(_Plain("%(message)s"))
        logger.addHandler(handler)


@contextlib.contextmanager
def library_output(log_file: Path | None = None) -> Iterator[None]:
    """Inside the block: no library progress bars; library warnings and log records go to
    ``log_file`` (appended; dropped when None) instead of the console, as do tuneship's own
    messages. Everything is restored afterwards.
    """
    handler: logging.Handler = logging.NullHandler()
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    restore_bars = _bars_off()
    ours = logging.getLogger("tuneship")
    saved = {name: _detach(logging.getLogger(name), handler) for name in LIBRARY_LOGGERS}
    if log_file is not None:
        ours.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_to_log
            yield
    finally:
        restore_bars()
        ours.removeHandler(handler)
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


def _detach(logger: logging.Logger, handler: logging.Handler) -> tuple[list[logging.Handler], bool]:
    """Send the logger's records to ``handler`` only; returns what to restore."""
    saved = (logger.handlers[:], logger.propagate)
    logger.handlers, logger.propagate = [handler], False
    return saved


def _warning_to_log(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, *args: Any
) -> None:
    text = warnings.formatwarning(message, category, filename, lineno, None).rstrip()
    logging.getLogger("py.warnings").warning("%s", text)


def _bars_off() -> Any:
    """Turn off the bars of transformers, datasets and huggingface_hub; returns what turns back on
    those that were on. Importing them here also lets them set up their loggers first, so that
    :func:`_detach` sees their own console handlers.
    """
    import datasets as ds
    from huggingface_hub.utils import are_progress_bars_disabled
    from huggingface_hub.utils import disable_progress_bars as hub_off
    from huggingface_hub.utils import enable_progress_bars as hub_on
    from transformers.utils import logging as hf

    hf.get_verbosity()  # configures its library logger (and console handler) now
    switches = [
        (hf.is_progress_bar_enabled(), hf.disable_progress_bar, hf.enable_progress_bar),
        (ds.is_progress_bar_enabled(), ds.disable_progress_bars, ds.enable_progress_bars),
        (not are_progress_bars_disabled(), hub_off, hub_on),
    ]
    for _, off, _ in switches:
        off()

    def restore() -> None:
        for was_on, _, on in switches:
            if was_on:
                on()

    return restore
