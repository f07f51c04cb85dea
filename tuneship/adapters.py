"""The adapter contract: find a PEFT adapter, hash its content, and say whether vLLM can serve it.

Export (``adapters check``, adapter-only export), serve (before vLLM sees an adapter), the
registry and the hot-load guard all call :func:`check_adapter`, so a bad adapter is refused
with its reason instead of failing inside the engine.

An adapter also carries the chat template it was trained with (``chat_template.jinja`` beside
its weights; its hash in the lineage). vLLM applies one template per server, to every model it
serves, so :func:`plan_chat_template` decides what one server applies: the base's own, the one
its adapters share (vLLM's ``--chat-template``), or a refusal when they need different ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tuneship.adapter_weights import (
    ADAPTER_BIN,
    MERGE,
    BaseLayout,
    find_noop,
    inspect_weights,
    read_base_layout,
    read_shapes,
)
from tuneship.artifacts import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    CHAT_TEMPLATE,
    MODEL_DIR,
    RUN_CONFIG,
    hash_dir,
    read_json,
)
from tuneship.chat import template_sha256
from tuneship.errors import ArtifactError
from tuneship.lineage import Lineage, read_lineage

# The values vLLM accepts for --max-lora-rank (vllm/config/lora.py).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
WEIGHT_FILES = (ADAPTER_WEIGHTS, ADAPTER_BIN)


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
    problems: list[str] = field(default_factory=list)  # vLLM cannot serve it (each with what to do)
    broken: list[str] = field(
        default_factory=list
    )  # of ``problems``: the weights load nowhere, a merge neither
    fixes: list[str] = field(default_factory=list)  # exact repairs ``tuneship adapters add`` makes
    renames: dict[str, str] = field(default_factory=dict)  # tensor renames among ``fixes``
    notes: list[str] = field(default_factory=list)  # worth knowing, not a refusal (e.g. a no-op adapter)
    compared_with: str | None = None  # the base whose modules the tensors were checked against
    other_base: bool = False  # names or shapes fit another base model, not ``compared_with``

    @property
    def ok(self) -> bool:
        """vLLM can serve the directory as it is."""
        return not self.problems and not self.fixes

    @property
    def fixable(self) -> bool:
        """Not servable as it is, but ``tuneship adapters add`` repairs it exactly."""
        return not self.problems and bool(self.fixes)

    @property
    def recommendation(self) -> str:
        if self.ok:
            return (
                f"serve it as a LoRA adapter (vLLM --max-lora-rank {fitting_max_lora_rank(self.rank or 1)}); "
                "if it is the only one you serve, a merged export is faster"
            )
        if self.fixable:
            return (
                "register it (tuneship adapters add NAME PATH), which makes the repairs above, and serve that"
            )
        if self.broken and self.other_base:
            return (
                "serve or merge it with the base model it was trained for (tuneship serve --base MODEL); "
                f"its tensors do not fit {self.compared_with}"
            )
        if self.broken:
            return "save the adapter again from training (a merged export cannot repair these weights)"
        return MERGE + ", or retrain as plain LoRA"

    def render(self) -> str:
        lines = [f"Adapter: {self.path}"]
        if self.rank is not None:
            targets = ", ".join(self.target_modules) or "?"
            lines.append(f"  rank {self.rank}, alpha {self.alpha}, target modules: {targets}")
        lines.append(f"  weights: {self.size_bytes / 1e6:.1f} MB")
        if self.base_name or self.base_sha256:
            lines.append(f"  trained on: {self.base_name} (weights sha256 {(self.base_sha256 or '?')[:12]})")
        if self.compared_with:
            lines.append(f"  tensors checked against: {self.compared_with}")
        if self.ok:
            lines.append("  vLLM can serve it")
        elif self.fixable:
            lines.append("  vLLM cannot serve this directory as it is; tuneship adapters add repairs it:")
        else:
            lines.append("  vLLM cannot serve it as LoRA:")
        lines += [f"    - {p}" for p in self.problems or self.fixes]
        lines += [f"  Note: {n}" for n in self.notes]
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


def check_adapter(
    path: Path | str,
    base_sha256: str | None = None,
    chat_template_sha256: str | None = None,
    base: Path | str | None = None,
) -> AdapterReport:
    """Report every reason vLLM would refuse the adapter, or ignore it (no problems: servable).

    ``base_sha256``: the served base's weights hash; ``chat_template_sha256``: the hash of the
    template the server applies. Either, when given, must match what the adapter was trained with.
    ``base``: the directory of the base model the tensors' names and shapes are checked against
    (its safetensors headers and config.json); without it, the base its lineage (or PEFT's
    ``base_model_name_or_path``) names, when that directory is at hand. Every caller — ``adapters
    check``, ``adapters add``, ``serve``, the hot-load guard, ``export`` — uses this one function.
    """
    path = Path(path)
    report = AdapterReport(path)
    if not (path / ADAPTER_CONFIG).is_file():
        report.problems.append(f"no {ADAPTER_CONFIG} in {path}")
        report.broken.append(report.problems[-1])
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
    lineage = read_lineage(path)
    _check_weights(path, config, _base_layout(path, base, lineage, config), report)
    if lineage is not None and lineage.base_model is not None:
        report.base_name = lineage.base_model.name
        report.base_sha256 = lineage.base_model.weights_sha256
        if base_sha256 and report.base_sha256 and report.base_sha256 != base_sha256:
            report.problems.append(
                f"trained on a different base model (weights sha256 {report.base_sha256[:12]}, "
                f"served base {base_sha256[:12]})"
            )
    if chat_template_sha256:
        problem = _template_problem(path, chat_template_sha256)
        if problem:
            report.problems.append(problem)
    return report


def _check_weights(path: Path, config: dict, base: BaseLayout | None, report: AdapterReport) -> None:
    """The weights file's tensors against the config and the base (see tuneship.adapter_weights)."""
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        report.broken.append(f"no adapter weights ({' or '.join(WEIGHT_FILES)}) in {path}")
        report.problems.append(report.broken[-1])
        return
    file = weights[0]
    report.size_bytes = file.stat().st_size
    report.compared_with = base.describe() if base else None
    try:
        shapes = read_shapes(file)
    except ArtifactError as e:
        report.broken.append(str(e))
        report.problems.append(str(e))
        return
    found = inspect_weights(config, shapes, base)
    report.broken += found.broken
    report.problems += found.broken + found.problems
    report.fixes += found.fixes
    report.renames = found.renames
    report.other_base = found.other_base
    report.notes += found.notes
    if file.name == ADAPTER_BIN:
        report.fixes.append(
            f"only {ADAPTER_BIN} (a pickle; tuneship serves safetensors), converted to "
            f"{ADAPTER_WEIGHTS} when registered"
        )
    if not found.broken:
        noop = find_noop(file, shapes)
        if noop:
            report.notes.append(noop)


def _base_layout(
    path: Path, base: Path | str | None, lineage: Lineage | None, config: dict
) -> BaseLayout | None:
    """The base to check tensors against: ``base``, else the one the lineage or PEFT names, if at hand."""
    if base is not None:
        return read_base_layout(base)
    recorded = lineage.base_model if lineage is not None else None
    for candidate in (recorded.path if recorded else None, config.get("base_model_name_or_path")):
        if candidate and (Path(candidate) / "config.json").is_file():
            name = recorded.name if recorded and candidate == recorded.path else None
            return read_base_layout(candidate, name)
    return None


def _unsupported_features(config: dict) -> list[str]:
    """What vLLM's PEFTHelper would reject (vllm/lora/peft_helper.py), in our words."""
    problems = []
    if config.get("use_dora"):
        problems.append(f"DoRA: vLLM does not serve DoRA adapters; {MERGE}")
    saved = [m for m in config.get("modules_to_save") or [] if m not in ("classifier", "score")]
    if saved:
        problems.append(f"modules_to_save {saved}: fully trained layers (e.g. resized embeddings); {MERGE}")
    if config.get("lora_bias") or config.get("bias", "none") != "none":
        problems.append("trained biases: vLLM serves LoRA without bias terms")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in ("gaussian", "eva", "orthogonal", "mica", "lora_ga"):
        problems.append(f"init_lora_weights={init!r} changes the base weights, which vLLM does not")
    if config.get("layer_replication"):
        problems.append("layer_replication is not supported by vLLM")
    return problems


@dataclass(frozen=True)
class AdapterTemplate:
    """The chat template an adapter was trained with, as far as it is known."""

    sha256: str | None  # None: nothing recorded (an adapter from elsewhere)
    file: Path | None = None  # where its text is; None: only the lineage's hash is known


def adapter_chat_template(adapter: Path | str) -> AdapterTemplate:
    """The adapter's template: ``ADAPTER/chat_template.jinja``, else its run's (``RUN/chat_template.jinja``
    beside ``RUN/adapter``), else the lineage's ``chat_template_sha256`` alone.

    Raises ArtifactError when a template file and the lineage's hash disagree.
    """
    adapter = Path(adapter)
    lineage = read_lineage(adapter) if adapter.is_dir() else None
    recorded = lineage.chat_template_sha256 if lineage else None
    run_dir = adapter.parent if (adapter.parent / RUN_CONFIG).is_file() else None
    for file in (adapter / CHAT_TEMPLATE, run_dir / CHAT_TEMPLATE if run_dir else None):
        if file is None or not file.is_file():
            continue
        digest = template_sha256(file.read_text(encoding="utf-8"))
        if recorded and digest != recorded:
            raise ArtifactError(
                f"{file} (sha256 {digest[:12]}) is not the chat template the adapter was trained with "
                f"(its lineage records {recorded[:12]})"
            )
        return AdapterTemplate(digest, file)
    return AdapterTemplate(recorded)


def _template_problem(adapter: Path, served_sha256: str) -> str | None:
    try:
        trained = adapter_chat_template(adapter).sha256
    except ArtifactError as e:
        return str(e)
    if trained is None or trained == served_sha256:
        return None
    return (
        f"trained with chat template sha256 {trained[:12]}, but this server applies {served_sha256[:12]} "
        "(vLLM applies one chat template per server): serve it on a server of its own "
        "(tuneship serve --adapter NAME=PATH) or as a merged export (tuneship export RUN --out DIR)"
    )


@dataclass(frozen=True)
class TemplatePlan:
    """The chat template one vLLM server applies to every model it serves."""

    sha256: str | None  # of the applied template; None: the server has none
    file: Path | None = None  # pass as vLLM's --chat-template; None: the server's default applies
    adapters: tuple[str, ...] = ()  # with ``file``: the adapters trained with it
    default: str = "the base model's own"  # what the server applies without ``file``
    unrecorded: tuple[str, ...] = ()  # adapters that record no template (not checked)

    def describe(self) -> str:
        """One line for ``tuneship serve``: which template, from where, and why."""
        digest = f"sha256 {self.sha256[:12]}" if self.sha256 else "none"
        if self.file:
            line = (
                f"Chat template: {self.file} ({digest}, trained with {', '.join(self.adapters)}), "
                "passed with --chat-template; every model on this server is rendered with it"
            )
        else:
            line = f"Chat template: {self.default} ({digest})"
        if self.unrecorded:
            line += f"; not recorded by {', '.join(self.unrecorded)} (not checked)"
        return line


def plan_chat_template(
    adapters: Mapping[str, Path | str], default_template: str | None, default: str = "the base model's own"
) -> TemplatePlan:
    """Decide the one template a server applies to ``adapters`` (name -> directory).

    ``default_template`` is what the server applies unless told otherwise (the base's own, see
    :func:`tuneship.chat.model_chat_template`). Templates are compared by hash: all adapters on the
    default (or none recorded) -> nothing to pass; all on one other template -> pass its file as
    vLLM's ``--chat-template``. Raises ArtifactError with the reason when adapters need different
    templates (vLLM applies one per server), or when the one they need is known only by its hash.
    """
    default_sha = template_sha256(default_template) if default_template else None
    found = {name: adapter_chat_template(path) for name, path in sorted(adapters.items())}
    groups: dict[str | None, list[str]] = {}
    for name, template in found.items():
        groups.setdefault(template.sha256, []).append(name)
    unrecorded = tuple(groups.pop(None, []))
    others = [sha for sha in groups if sha != default_sha]
    if not others:
        return TemplatePlan(default_sha, default=default, unrecorded=unrecorded)
    if len(groups) > 1:
        lines = [
            f"  sha256 {sha[:12]}{f' ({default})' if sha == default_sha else ''}: {', '.join(names)}"
            for sha, names in groups.items()
        ]
        raise ArtifactError(
            "these adapters were trained with different chat templates, and vLLM applies one template "
            "per server:\n" + "\n".join(lines) + "\nserve each group on a server of its own, or serve "
            "an adapter as a merged model (tuneship export RUN --out DIR; tuneship serve --merged DIR)"
        )
    sha, names = others[0], groups[others[0]]
    file = next((found[name].file for name in names if found[name].file), None)
    if file is None:
        raise ArtifactError(
            f"{', '.join(names)}: trained with chat template sha256 {sha[:12]}, not {default} "
            f"({(default_sha or 'none')[:12]}), and its text is not with the adapter: add it again from "
            "its run directory (tuneship adapters add NAME RUN), or serve a merged export"
        )
    return TemplatePlan(sha, file, tuple(names), default, unrecorded)
