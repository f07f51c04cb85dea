"""An Ollama ``Modelfile`` beside a GGUF export: FROM the file, the chat template, the stop tokens.

Ollama's ``TEMPLATE`` is a Go template, not Jinja. It is derived from the run's Jinja template by
rendering probe conversations (the text around each role's content, the generation prompt and a
default system prompt), and written only when rebuilding conversations from those pieces gives
exactly what the Jinja template renders; otherwise the Modelfile has no ``TEMPLATE`` and Ollama
uses the ``tokenizer.chat_template`` stored in the GGUF file (a comment says so).
"""

from __future__ import annotations

from typing import Any

from tuneship.lineage import Lineage
from tuneship.models import DEFAULT_BASE

MODELFILE = "Modelfile"
_MARK = {"system": "TS-SYSTEM-PROBE", "user": "TS-USER-PROBE", "assistant": "TS-ASSISTANT-PROBE"}
_ROLES = ("system", "user", "assistant")


def _render(tokenizer: Any, template: str, messages: list[dict], generation: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation, chat_template=template
    )


def _pieces(tokenizer: Any, template: str) -> dict[str, Any] | None:
    """Prefix/suffix of each role's content, the generation prompt and a default system block."""
    msgs = [{"role": r, "content": _MARK[r]} for r in _ROLES]
    texts = [_render(tokenizer, template, msgs[: i + 1]) for i in range(3)]
    parts = {"system": texts[0], "user": texts[1][len(texts[0]) :], "assistant": texts[2][len(texts[1]) :]}
    if not texts[1].startswith(texts[0]) or not texts[2].startswith(texts[1]):
        return None
    pieces: dict[str, Any] = {r: tuple(parts[r].split(_MARK[r], 1)) for r in _ROLES}
    if any(len(p) != 2 for p in pieces.values()):
        return None
    pieces["generation"] = _render(tokenizer, template, msgs[:2], True)[len(texts[1]) :]
    alone = _render(tokenizer, template, msgs[1:2])
    pieces["default_system"] = (
        alone[: len(alone) - len(parts["user"])] if alone.endswith(parts["user"]) else None
    )
    return None if pieces["default_system"] is None else pieces


def _rebuild(pieces: dict[str, Any], messages: list[dict], generation: bool) -> str:
    """What the Go template below renders for ``messages`` (a Python twin, for checking)."""
    text = "" if messages and messages[0]["role"] == "system" else pieces["default_system"]
    for m in messages:
        pre, suf = pieces[m["role"]]
        text += pre + m["content"] + suf
    return text + (pieces["generation"] if generation else "")


def go_template(tokenizer: Any, template: str) -> str | None:
    """The run's chat template as an Ollama Go template, or None when it cannot be derived exactly."""
    pieces = _pieces(tokenizer, template)
    if pieces is None:
        return None
    probes = [
        [{"role": "user", "content": "Hi there"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c\nd"},
        ],
    ]
    for messages in probes:
        if _render(tokenizer, template, messages, True) != _rebuild(pieces, messages, True):
            return None
    literals = [pieces["default_system"], pieces["generation"], *[s for r in _ROLES for s in pieces[r]]]
    if any("{{" in s or '"""' in s for s in literals):
        return None
    roles = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{r}" }}}}{pre}{{{{ .Content }}}}{suf}'
        for i, (r, (pre, suf)) in enumerate((r, pieces[r]) for r in _ROLES)
    )
    return (
        f'{{{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}}}{pieces["default_system"]}'
        f"{{{{ end }}}}{{{{ range .Messages }}}}{roles}{{{{ end }}}}{{{{ end }}}}{pieces['generation']}"
    )


def modelfile(gguf_name: str, tokenizer: Any, template: str, stop_ids: list[int], lineage: Lineage) -> str:
    """The text of an Ollama Modelfile for ``gguf_name``, with lineage and license as comments."""
    base = lineage.base_model
    lines = [
        "# Ollama Modelfile written by `tuneship export --format gguf`:  ollama create NAME -f Modelfile",
        f"# Base model: {base.name} (weights sha256 {base.weights_sha256})" if base else "# Base model: ?",
        f"# Adapter merged in: {lineage.adapter} (weights sha256 {lineage.adapter_sha256})",
    ]
    if lineage.data is not None:
        lines.append(f"# Training data: {lineage.data.path} (sha256 {lineage.data.sha256})")
    lines.append(f"# Chat template sha256: {lineage.chat_template_sha256 or '?'}")
    license_note = " (Apache-2.0)" if base and base.name == DEFAULT_BASE else ""
    lines += [f"# License: that of the base model{license_note}; the adapter's is the run owner's", ""]
    lines.append(f"FROM ./{gguf_name}")
    go = go_template(tokenizer, template)
    if go is None:
        lines.append("# No TEMPLATE: the chat template is not expressible here; Ollama reads the GGUF's own")
    else:
        lines.append(f'TEMPLATE """{go}"""')
    for token in dict.fromkeys(tokenizer.convert_ids_to_tokens(i) for i in stop_ids):
        lines.append(f"PARAMETER stop {_quoted(token)}")
    return "\n".join(lines) + "\n"


def _quoted(token: str) -> str:
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'
