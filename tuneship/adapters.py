"""The adapter contract: find a PEFT adapter, hash its content, and say whether vLLM can serve it.

Export (``adapters check``, adapter-only export), serve (before vLLM sees an adapter), the
registry and the hot-load guard all call :func:`check_adapter`, so a bad adapter is refused
with its reason instead of failing inside the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuneship.artifacts import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    MODEL_DIR,
    RUN_CONFIG,
    hash_dir,
    read_json,
)
from tuneship.errors import ArtifactError
from tuneship.lineage import read_lineage

# The values vLLM accepts for --max-lora-rank (vllm/config/lora.py).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
WEIGHT_FILES = (ADAPTER_WEIGHTS, "adapter_model.bin")


def adapter_hash(path: Path) -> str:
    """Content hash of an adapter: its config and weights (what decides its outputs)."""
    return hash_dir(Path(path), "adapter_*")


@dataclass
class AdapterReport:
    path: Path
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=list)
    size_bytes: int = 0
    base_name: str | None = None
    base_sha256: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def recommendation(self) -> str:
        if self.ok:
            return (
                f"serve it as a LoRA adapter (vLLM --max-lora-rank {fitting_max_lora_rank(self.rank or 1)}); "
                "if it is the only one you serve, a merged export is faster"
            )
        return "serve it as a merged model (tuneship export RUN --out DIR), or retrain as plain LoRA"

    def render(self) -> str:
        lines = [f"Adapter: {self.path}"]
        if self.rank is not None:
            targets = ", ".join(self.target_modules) or "?"
            lines.append(f"  rank {self.rank}, alpha {self.alpha}, target modules: {targets}")
        lines.append(f"  weights: {self.size_bytes / 1e6:.1f} MB")
        if self.base_name or self.base_sha256:
            lines.append(f"  trained on: {self.base_name} (weights sha256 {(self.base_sha256 or '?')[:12]})")
        verdict = "vLLM can serve it" if self.ok else "vLLM cannot serve it as LoRA:"
        lines.append(f"  {verdict}")
        lines += [f"    - {p}" for p in self.problems]
        lines.append(f"  Recommendation: {self.recommendation}")
        return "\n".join(lines)


def fitting_max_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def locate_adapter(path: Path | str) -> Path:
    """Accept a run directory (with adapter/) or an adapter directory."""
    path = Path(path)
    if (path / ADAPTER_DIR / ADAPTER_CONFIG).is_file():
        return path / ADAPTER_DIR
    if (path / ADAPTER_CONFIG).is_file():
        return path
    if (path / MODEL_DIR / "config.json").is_file():
        raise ArtifactError(
            f"{path} is a full fine-tuning run: {path / MODEL_DIR} is already a complete model; "
            "serve it directly (tuneship serve --merged)"
        )
    if (path / RUN_CONFIG).is_file():
        raise ArtifactError(f"{path}: the run has no finished adapter (was training interrupted?)")
    raise ArtifactError(f"{path}: neither a run directory nor a PEFT adapter (no {ADAPTER_CONFIG})")


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
    report.alpha = config.get("lora_alpha")
    targets = config.get("target_modules") or []
    # PEFT records all-linear as every module path; the layer kinds are what a reader needs.
    kinds = [targets] if isinstance(targets, str) else {t.split(".")[-1] for t in targets}
    report.target_modules = sorted(kinds)
    ranks = [rank, *(config.get("rank_pattern") or {}).values()]
    report.rank = max(ranks) if all(isinstance(r, int) and r > 0 for r in ranks) else None
    if report.rank is None:
        report.problems.append("adapter_config.json has no positive integer rank 'r'")
    elif report.rank > VLLM_LORA_RANKS[-1]:
        report.problems.append(
            f"rank {report.rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}"
        )
    report.problems += _unsupported_features(config)
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        report.problems.append(f"no adapter weights ({' or '.join(WEIGHT_FILES)}) in {path}")
    else:
        report.size_bytes = weights[0].stat().st_size
    if weights and weights[0].suffix == ".safetensors":
        problem = _safetensors_problem(weights[0])
        if problem:
            report.problems.append(problem)
    lineage = read_lineage(path)
    if lineage is not None and lineage.base_model is not None:
        report.base_name = lineage.base_model.name
        report.base_sha256 = lineage.base_model.weights_sha256
        if base_sha256 and report.base_sha256 and report.base_sha256 != base_sha256:
            report.problems.append(
                f"trained on a different base model (weights sha256 {report.base_sha256[:12]}, "
                f"served base {base_sha256[:12]})"
            )
    return report


def _unsupported_features(config: dict) -> list[str]:
    """What vLLM's PEFTHelper would reject (vllm/lora/peft_helper.py), in our words."""
    problems = []
    if config.get("use_dora"):
        problems.append("DoRA: vLLM does not serve DoRA adapters")
    saved = [m for m in config.get("modules_to_save") or [] if m not in ("classifier", "score")]
    if saved:
        problems.append(f"modules_to_save {saved}: fully trained layers (e.g. resized embeddings)")
    if config.get("lora_bias") or config.get("bias", "none") != "none":
        problems.append("trained biases: vLLM serves LoRA without bias terms")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in ("gaussian", "eva", "orthogonal", "mica", "lora_ga"):
        problems.append(f"init_lora_weights={init!r} changes the base weights, which vLLM does not")
    if config.get("layer_replication"):
        problems.append("layer_replication is not supported by vLLM")
    return problems


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
