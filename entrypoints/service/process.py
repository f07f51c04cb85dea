"""A child command in a process group of its own: started with its output in a log, stopped whole.

Training and the preflight run this way (never inside the API process); stopping the group
stops whatever the command started too (data loader workers, torchrun's children).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "tuneship.entrypoints.cli"]  # the tuneship command, as a user runs it


class ProcessGroup:
    """One command in its own session (process group), its stdout and stderr in ``log``."""

    def __init__(
        self,
        args: list[str],
        log: Path,
        cwd: Path | None = None,
        env: dict | None = None,
        stdout: Path | None = None,
    ) -> None:
        """Start ``args``; ``stdout``: a file of its own for the standard output (else the log)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as err, stdout.open("wb") if stdout else log.open("ab") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=err, cwd=cwd, env=env, start_new_session=True
            )
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.process.poll()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL what is left after ``grace`` seconds; returns when it is gone."""
        kill_group(self.pid, grace, self.process)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def log_lines(self, last: int = 40) -> list[str]:
        """The last lines of the log."""
        try:
            return self.log.read_text(errors="replace").splitlines()[-last:]
        except OSError:
            return []


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (zombies of our own children aside)."""
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_group(pgid: int, grace: float = 10.0, leader: subprocess.Popen | None = None) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, until no process of the group is left.

    ``leader``: the group's first process when it is our child (collected, so it is no zombie).
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if leader is not None:
                leader.poll()
            if not group_alive(pgid):
                return
            time.sleep(0.1)


def error_line(lines: list[str]) -> str | None:
    """The one-line error a tuneship command printed (``Error: ...``), with its indented details."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Error: "):
            details = [line.strip() for line in lines[i + 1 :] if line.startswith("  ")]
            return "; ".join([lines[i].removeprefix("Error: ").strip(), *details[:20]])
    return None
