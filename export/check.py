"""Can vLLM serve this adapter? Checks that run before anything is loaded.

The serve stage calls :func:`check_adapter` before it passes an adapter to vLLM, so a
bad adapter is refused with its reason instead of failing inside the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuneship.artifacts import ADAPTER_CONFIG, LINEAGE, read_json

# The values vLLM accepts for --max-lora-rank (vllm/config/lora.py).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class AdapterReport:
    path: Path
    rank: int | None = None
    base_sha256: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def fitting_max_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def check_adapter(path: Path | str, base_sha256: str | None = None) -> AdapterReport:
    """Report every reason vLLM would refuse the adapter (empty list: servable)."""
    path = Path(path)
    report = AdapterReport(path)
    if not (path / ADAPTER_CONFIG).is_file():
        report.problems.append(f"no {ADAPTER_CONFIG} in {path}")
        return report
    config = read_json(path / ADAPTER_CONFIG)
    if config.get("peft_type") != "LORA":
        report.problems.append(f"peft_type is {config.get('peft_type')!r}; vLLM serves only LORA adapters")
    rank = config.get("r")
    report.rank = rank if isinstance(rank, int) else None
    if report.rank is None:
        report.problems.append("adapter_config.json has no integer rank 'r'")
    elif report.rank > VLLM_LORA_RANKS[-1]:
        report.problems.append(
            f"rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}; merge it"
        )
    if config.get("use_dora"):
        report.problems.append(
            "DoRA adapters cannot be served by vLLM as LoRA; export a merged model instead"
        )
    if config.get("modules_to_save"):
        report.problems.append(
            f"modules_to_save {config['modules_to_save']} (trained full layers) "
            "cannot be served as LoRA; merge it"
        )
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        report.problems.append(f"no adapter weights ({' or '.join(WEIGHT_FILES)}) in {path}")
    elif weights[0].suffix == ".safetensors":
        problem = _safetensors_problem(weights[0])
        if problem:
            report.problems.append(problem)
    if (path / LINEAGE).is_file():
        report.base_sha256 = read_json(path / LINEAGE).get("base_model", {}).get("weights_sha256")
        if base_sha256 and report.base_sha256 and report.base_sha256 != base_sha256:
            report.problems.append(
                f"trained on a different base model (weights sha256 {report.base_sha256[:12]}, "
                f"served base {base_sha256[:12]})"
            )
    return report


def _safetensors_problem(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            for name in names:
                f.get_slice(name)
    except Exception as e:  # safetensors raises its own error types
        return f"{path.name} is unreadable ({str(e).splitlines()[0][:200]})"
    if not names:
        return f"{path.name} holds no tensors"
    return None
