"""An adapter's tensors against its config and its base: names, shapes and values.

vLLM matches an adapter's tensors to the base's modules by name and trusts their shapes: a name
that matches no module is ignored without a word (the adapter changes nothing), an empty or
mis-shaped tensor fails inside the engine. This module reads the adapter's tensor names and shapes
(the safetensors header; a ``.bin`` pickle is loaded with ``weights_only``) and the base's module
names and weight shapes (its safetensors headers and ``config.json``, no weights loaded), and says
what does not fit. :func:`tuneship.adapters.check_adapter` calls :func:`inspect_weights`;
:func:`write_safetensors` writes the fixed-up copy that ``tuneship adapters add`` registers.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.errors import ArtifactError

ADAPTER_BIN = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."
# Prefixes other tools leave inside tensor names, and the tool: stripped only when exact.
KNOWN_PREFIXES = {"_orig_mod.": "torch.compile"}
# PEFT's names for the two LoRA factors: A is [rank, in], B is [out, rank].
LORA_PARTS = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_embedding_A": "A",  # embeddings: A is [rank, vocab], B is [dim, rank]
    ".lora_embedding_B": "B",
}
TOKEN_ROWS = ".token_adapter.trainable_tokens_"  # PEFT trainable_token_indices
MERGE = "export a merged model instead (tuneship export RUN --out DIR; tuneship serve --merged DIR)"
SHOWN = 3  # examples named in a message

Shapes = dict[str, tuple[int, ...]]


@dataclass
class WeightFindings:
    """What the tensors say. ``broken``: the weights do not load anywhere (a merge neither);
    ``problems``: vLLM cannot serve them as LoRA; ``fixes``: what ``adapters add`` repairs exactly."""

    broken: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    renames: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    other_base: bool = False  # the tensors fit another base model: names or shapes miss this one


@dataclass(frozen=True)
class BaseLayout:
    """A base model's module names and weight shapes ([out, in]; None where not comparable)."""

    name: str
    modules: Mapping[str, tuple[int, ...] | None]
    hidden_size: int | None = None
    vocab_size: int | None = None

    def describe(self) -> str:
        return f"{self.name} (hidden size {self.hidden_size or '?'})"


def read_shapes(file: Path) -> Shapes:
    """Tensor name -> shape of an adapter's weights file. Raises ArtifactError when unreadable."""
    file = Path(file)
    try:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
        return {name: tuple(t.shape) for name, t in read_tensors(file).items()}
    except ArtifactError:
        raise
    except Exception as e:  # safetensors and torch raise their own error types
        raise ArtifactError(f"{file.name} is unreadable ({_first_line(e)})") from None


def read_tensors(file: Path) -> dict[str, Any]:
    """All tensors of a weights file (safetensors, or a ``.bin`` pickle loaded with weights_only)."""
    file = Path(file)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(file)))
        import torch

        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise their own error types
        raise ArtifactError(f"{file.name} is unreadable ({_first_line(e)})") from None
    if not isinstance(state, dict):
        raise ArtifactError(f"{file.name} is unreadable (not a state dict)")
    return state


def write_safetensors(source: Path, target: Path, renames: Mapping[str, str]) -> None:
    """Write ``source``'s tensors as safetensors to ``target``, names renamed by ``renames``."""
    from safetensors.torch import save_file

    tensors = {renames.get(k, k): v.detach().clone().contiguous() for k, v in read_tensors(source).items()}
    save_file(tensors, str(target), metadata={"format": "pt"})


def read_base_layout(path: Path | str, name: str | None = None) -> BaseLayout | None:
    """The module names and weight shapes of the model at ``path`` from its safetensors headers
    (no weights loaded); None when it has no ``config.json`` or no safetensors."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not (path / "config.json").is_file() or not files:
        return None
    config = json.loads((path / "config.json").read_text())
    text = config.get("text_config") or {}
    quantized = "quantization_config" in config
    modules: dict[str, tuple[int, ...] | None] = {}
    for file in files:
        for key, shape in _header_shapes(file).items():
            module, _, kind = key.rpartition(".")
            comparable = kind == "weight" and len(shape) == 2 and not quantized
            if comparable or module not in modules:
                modules[module] = shape if comparable else None
    embedding = next((m for m in modules if m.rsplit(".", 1)[-1] in ("embed_tokens", "wte")), None)
    if embedding and not any(m.endswith("lm_head") for m in modules):  # tied: lm_head is the embedding
        modules["lm_head"] = modules[embedding]
    return BaseLayout(
        name or path.name,
        modules,
        config.get("hidden_size") or text.get("hidden_size") or config.get("n_embd"),
        config.get("vocab_size") or text.get("vocab_size"),
    )


def _header_shapes(file: Path) -> Shapes:
    """Tensor shapes from a safetensors header: 8 bytes of length, then JSON."""
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


Factors = dict[str, dict[str, tuple[int, ...]]]  # module key -> {"A": shape, "B": shape}


def inspect_weights(config: Mapping[str, Any], shapes: Shapes, base: BaseLayout | None) -> WeightFindings:
    """Check the tensors (name -> shape) against ``config`` (adapter_config.json) and ``base``."""
    found = WeightFindings()
    if not shapes:
        found.broken.append("the weights file holds no tensors")
        return found
    empty = [n for n, s in shapes.items() if 0 in s or not s]
    if empty:
        found.broken.append(
            f"{len(empty)} of {len(shapes)} tensors are empty (shape [0], e.g. {_short(empty[0])}): "
            "what DeepSpeed ZeRO-3 saves without gathering the weights; save the adapter again with "
            "stage3_gather_16bit_weights_on_model_save on (or consolidate with zero_to_fp32.py)"
        )
        return found
    if config.get("peft_type") != "LORA":  # the config check names it; nothing LoRA to compare
        return found
    _trained_rows(config, shapes, base, found)
    factors: Factors = {}
    embeddings = set()
    for name, shape in shapes.items():
        suffix = next((p for p in LORA_PARTS if name.endswith(p)), None)
        if suffix is not None:
            factors.setdefault(name[: -len(suffix)], {})[LORA_PARTS[suffix]] = shape
            if "embedding" in suffix:
                embeddings.add(name[: -len(suffix)])
    _ranks(config, factors, found)
    if not found.broken:
        _against_base(factors, embeddings, shapes, base, bool(config.get("fan_in_fan_out")), found)
    return found


def _trained_rows(
    config: Mapping[str, Any], shapes: Shapes, base: BaseLayout | None, found: WeightFindings
) -> None:
    """Trained token rows, added tokens and fully trained tensors: none is LoRA, so vLLM refuses."""
    rows = [n for n in shapes if TOKEN_ROWS in n]
    if config.get("trainable_token_indices") or rows:
        where = _short(rows[0]).split(".token_adapter")[0] if rows else "trainable_token_indices"
        found.problems.append(
            f"trained token rows ({where}: PEFT trainable_token_indices): vLLM serves no trained "
            f"embedding rows as LoRA; {MERGE}"
        )
    full = [n for n in shapes if TOKEN_ROWS not in n and not any(n.endswith(p) for p in LORA_PARTS)]
    vocab = base.vocab_size if base else None
    resized = [n for n in full if vocab and _is_embedding(n) and shapes[n][0] != vocab]
    if resized:
        found.problems.append(
            f"added tokens: {_short(resized[0])} has {shapes[resized[0]][0]} rows, the base's vocabulary "
            f"{vocab}; vLLM serves no added tokens as LoRA; {MERGE}"
        )
    # vLLM skips a saved copy of the base's own embedding (...embed_tokens.base_layer.weight);
    # DoRA magnitudes and LoRA biases are named by the config check.
    trained = [
        n for n in full if not re.search(r"\.base_layer\.|lora_magnitude|\.bias$", n) and n not in resized
    ]
    if trained and not config.get("modules_to_save"):  # else the config's own entry says it
        names = ", ".join(_short(n) for n in trained[:SHOWN])
        found.problems.append(
            f"fully trained tensors that are not LoRA factors (modules_to_save: {names}); "
            f"vLLM serves only LoRA A/B pairs; {MERGE}"
        )


def _ranks(config: Mapping[str, Any], factors: Factors, found: WeightFindings) -> None:
    """Every module has both factors, of the rank adapter_config.json gives it (``r``, ``rank_pattern``)."""
    lone = [m for m, parts in factors.items() if len(parts) != 2]
    if lone:
        found.broken.append(
            f"{len(lone)} modules have one LoRA factor only (e.g. {_short(lone[0])} has only "
            f"lora_{next(iter(factors[lone[0]]))}): the file is incomplete; save the adapter again"
        )
        return
    pattern = config.get("rank_pattern") or {}
    wrong = []
    for module, parts in factors.items():
        key = next((k for k in pattern if re.match(rf"(.*\.)?({k})$", _module(module))), None)  # as PEFT
        expected = pattern[key] if key else config.get("r")
        ra, rb = parts["A"][0], parts["B"][-1]
        if ra != rb or (isinstance(expected, int) and ra != expected):
            wrong.append((module, ra, rb, expected))
    if wrong:
        module, ra, rb, expected = wrong[0]
        found.broken.append(
            f"{len(wrong)} of {len(factors)} modules have factors of another rank than adapter_config.json "
            f"gives (e.g. {_short(module)}: lora_A rank {ra}, lora_B rank {rb}, config r={expected}): "
            "the config does not belong to these weights; save the adapter again"
        )


def _against_base(
    factors: Factors,
    embeddings: set[str],
    shapes: Shapes,
    base: BaseLayout | None,
    transposed: bool,
    found: WeightFindings,
) -> None:
    """Module names and shapes against the base; a known prefix stripped when that is exact."""
    prefixed = {p: tool for p, tool in KNOWN_PREFIXES.items() if any(p in m for m in factors)}
    if base is None:
        found.notes.append(
            "names and shapes not compared with a base model (none given or at hand): pass --base"
        )
        for prefix, tool in prefixed.items():
            found.broken.append(
                f"tensor names carry {tool}'s '{prefix}' prefix (vLLM would ignore those tensors): pass "
                "--base so tuneship can check that stripping it matches the base exactly"
            )
        return
    modules = {key: _module(key) for key in factors}
    names, misfits = _misses(factors, modules, embeddings, base, transposed)
    for prefix, tool in prefixed.items():
        stripped = {key: _module(key.replace(prefix, "")) for key in factors}
        if names and _misses(factors, stripped, embeddings, base, transposed) == ([], []):
            found.fixes.append(
                f"tensor names carry {tool}'s '{prefix}' prefix, stripped when registered "
                f"(exact: all {len(modules)} adapted modules then match {base.name})"
            )
            found.renames = {n: n.replace(prefix, "") for n in shapes if prefix in n}
            return
    found.other_base = bool(names or misfits)
    if names:
        example = max(base.modules, key=lambda m: len(os.path.commonprefix([m, names[0]])), default="?")
        found.broken.append(
            f"{len(names)} of {len(modules)} adapted modules match no module of {base.name} "
            f"(e.g. {names[0]}; the base has e.g. {example}): vLLM would load the adapter and ignore "
            "them; it was saved from another model, or with a wrapper's prefix in its names"
        )
    if misfits:
        module, want, got = misfits[0]
        found.broken.append(
            f"{len(misfits)} of {len(modules)} adapted modules do not fit the shapes of "
            f"{base.describe()} (e.g. {module}: the base's weight is {list(want)}, the adapter's "
            f"lora_B x lora_A is {list(got)}): an adapter for another base model"
        )


def _misses(
    factors: Factors, modules: Mapping[str, str], embeddings: set[str], base: BaseLayout, transposed: bool
) -> tuple[list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """Modules missing from the base, and modules whose [out, in] differ from the base's weight."""
    names, misfits = [], []
    for key, module in modules.items():
        if module not in base.modules:
            names.append(module)
            continue
        want = base.modules[module]
        if want is None:
            continue
        if transposed or key in embeddings:  # Conv1D weights and embeddings are stored [in, out]
            want = want[::-1]
        got = (factors[key]["B"][0], factors[key]["A"][-1])
        if got != want:
            misfits.append((module, want, got))
    return names, misfits


def find_noop(file: Path, shapes: Shapes) -> str | None:
    """A note when every LoRA B factor is zero (untrained: PEFT starts B at zero), else None."""
    names = [n for n in shapes if n.endswith((".lora_B.weight", ".lora_embedding_B"))]
    if not names or len(names) * 2 != len(shapes):
        return None
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            if any(bool(f.get_tensor(n).any()) for n in names):
                return None
    elif any(bool(t.any()) for n, t in read_tensors(file).items() if n in names):
        return None
    return (
        f"all {len(names)} lora_B factors are zero: the adapter is untrained (PEFT starts B at zero) and "
        "changes nothing; was it saved before training?"
    )


def _module(key: str) -> str:
    """The base module a tensor key (without its LoRA suffix) belongs to."""
    return key.removeprefix(PEFT_PREFIX)


def _is_embedding(name: str) -> bool:
    return any(part in name.split(".") for part in ("embed_tokens", "wte", "lm_head", "embed_out"))


def _short(name: str) -> str:
    return name.removeprefix(PEFT_PREFIX)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
