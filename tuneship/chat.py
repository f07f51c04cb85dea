"""The chat-template contract: one owner for resolving, rendering and stopping.

Training renders its examples with the template resolved here, writes it next to the
adapter (``chat_template.jinja``) and records its hash in the lineage; export writes it
into the merged model; serve passes it to vLLM (``--chat-template``) when it is not the
base's own; verify renders prompts with it and compares them, token for token, with
what the server renders. No other module picks a template or falls back on its own.

Each trained assistant turn is found by rendering the conversation up to that turn
with the generation prompt (the prefix the server will also produce) and up to the
end of the turn; the characters in between (the answer and its end-of-turn token)
carry loss. Working on characters, then mapping to tokens through the tokenizer's
offsets, makes this independent of how tokens merge at the boundaries.

Messages arrive in OpenAI's format (:mod:`tuneship.train.messages`) and reach the template
as vLLM hands a request's messages to it (tool-call arguments as objects, a missing content
as ""), so training and the server render the same text; ``developer`` becomes ``system``
unless the template names it. A row's tools are passed as ``tools=``; a template that leaves
out the tools, a tool call or a tool result refuses the row (:class:`UnrenderedRow`) rather
than train an empty turn.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tuneship.artifacts import CHAT_TEMPLATE, read_json, sha256_text
from tuneship.errors import DataError, ModelError


def resolve_chat_template(tokenizer: Any, template_file: str | Path | None = None) -> str:
    """The template to render with: ``template_file`` when given, else the tokenizer's own.

    Sets it on ``tokenizer`` (so ``save_pretrained`` and ``apply_chat_template`` use it) and
    returns its text. Raises ModelError when neither exists (a base without a chat template).
    """
    if template_file:
        path = Path(template_file)
        if not path.is_file():
            raise ModelError(f"chat template {path}: no such file")
        template = path.read_text()
    else:
        template = tokenizer.chat_template
    if not template or not isinstance(template, str):
        raise ModelError(
            f"{getattr(tokenizer, 'name_or_path', 'the tokenizer')}: no chat template; "
            "pass --chat-template FILE"
        )
    tokenizer.chat_template = template
    return template


def run_chat_template(run_dir: str | Path, tokenizer: Any) -> str:
    """The template a finished run trained with (``RUN/chat_template.jinja``), set on ``tokenizer``.

    Every run writes the file; a directory without it (a bare adapter) gets the tokenizer's own.
    """
    file = Path(run_dir) / CHAT_TEMPLATE
    return resolve_chat_template(tokenizer, file if file.is_file() else None)


def model_chat_template(model_dir: str | Path) -> str | None:
    """A model directory's own template, read from its files the way transformers loads it.

    ``chat_template.jinja`` wins over ``tokenizer_config.json``'s ``chat_template``; of named
    templates, the ``default`` one (what vLLM applies to a chat request without tools). None
    when the model has none. Reads files only (no transformers import), so serve stays fast.
    """
    file = Path(model_dir) / CHAT_TEMPLATE
    if file.is_file():
        return file.read_text(encoding="utf-8")
    config = Path(model_dir) / "tokenizer_config.json"
    template = read_json(config).get("chat_template") if config.is_file() else None
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}.get("default")
    return template if isinstance(template, str) and template else None


def template_sha256(template: str) -> str:
    """Hash of a template's text, as recorded in lineage (``chat_template_sha256``)."""
    return sha256_text(template)


def text_of(content: Any) -> str:
    """A message content's text: a string as it is, a list of text parts joined with newlines (as
    vLLM joins them for a template that takes strings; other parts are left out), None as ""."""
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


class UnrenderedRow(DataError):
    """A row the chat template cannot render as written (tools, tool calls or tool results it
    leaves out): a problem of that row, reported with its ``file:line`` like any invalid row."""


# A template that names the developer role renders it; others get it as a system message.
_DEVELOPER = re.compile(r"""["']developer["']""")
_TOOLS_HINT = "; use a base whose chat template renders tools, or pass --chat-template FILE"


def knows_developer(template: str | None) -> bool:
    """Whether ``template`` handles the ``developer`` role itself (it names it in a string)."""
    return bool(template and _DEVELOPER.search(template))


def served_messages(messages: list[dict], chat_template: str | None) -> list[dict]:
    """Messages in OpenAI's wire format as the server must receive them to render what training
    rendered: without training-only keys (``weight``), ``developer`` as ``system`` unless the
    template knows it (vLLM hands roles to the template as they are)."""
    developer = "developer" if knows_developer(chat_template) else "system"
    out = []
    for m in messages:
        served = {k: v for k, v in m.items() if k != "weight"}
        if served["role"] == "developer":
            served["role"] = developer
        if served.get("content") is None:
            served["content"] = ""  # vLLM renders a missing content as ""
        out.append(served)
    return out


def _template_messages(messages: list[dict], chat_template: str | None) -> list[dict]:
    """What the template sees, as vLLM hands it over: tool-call arguments parsed into objects."""
    out = served_messages(messages, chat_template)
    for m in out:
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": _parsed(c["function"])} for c in m["tool_calls"]]
    return out


def _parsed(function: dict) -> dict:
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments else {}
        except json.JSONDecodeError:
            arguments = {}  # what vLLM does with arguments that are not JSON
    return {**function, "arguments": arguments if isinstance(arguments, dict) else {}}


def _apply(
    messages: list[dict],
    tokenizer: Any,
    chat_template: str | None,
    generation_prompt: bool,
    tools: list[dict] | None = None,
) -> str:
    template = chat_template or tokenizer.chat_template
    return tokenizer.apply_chat_template(
        _template_messages(messages, template if isinstance(template, str) else None),
        tools=tools or None,
        tokenize=False,
        add_generation_prompt=generation_prompt,
        chat_template=chat_template,
    )


def trained_spans(
    messages: list[dict], tokenizer: Any, chat_template: str | None, tools: list[dict] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans ``[start, end)`` of the trained assistant turns.

    ``tools`` are the row's tools (OpenAI's format). Assistant turns with tool calls are trained
    like any other (their weight decides); tool results never are. Raises UnrenderedRow when the
    template leaves out the row's tools, a tool call or a tool result, and DataError when it does
    not render conversations incrementally.
    """
    text = _apply(messages, tokenizer, chat_template, False, tools)
    spans = []
    for i, message in enumerate(messages):
        calls = message.get("tool_calls") or []
        if message["role"] != "assistant" or not (message.get("weight", 1) or calls):
            continue
        start = _apply(messages[:i], tokenizer, chat_template, True, tools)
        end = _apply(messages[: i + 1], tokenizer, chat_template, False, tools)
        if not text.startswith(start) or not text.startswith(end) or len(end) <= len(start):
            raise DataError(
                "the chat template does not render conversations incrementally, so the assistant turns "
                "cannot be located; train with --loss-on all or supply a template with --chat-template"
            )
        left_out = [c["function"]["name"] for c in calls if c["function"]["name"] not in end[len(start) :]]
        if left_out:
            raise UnrenderedRow(
                f"the chat template does not render tool calls (the call to {', '.join(left_out)} in "
                f"messages[{i}] is not in its rendered turn){_TOOLS_HINT}"
            )
        if message.get("weight", 1):
            spans.append((len(start), len(end)))
    _check_tools_rendered(messages, tools, text, lambda: _apply(messages, tokenizer, chat_template, False))
    return text, spans


def _check_tools_rendered(messages: list[dict], tools: list[dict] | None, text: str, without_tools) -> None:
    """Raise UnrenderedRow when ``text`` (rendered with ``tools``) leaves out a tool or a tool result."""
    if tools:
        names = [t["function"]["name"] for t in tools]
        if any(name not in text for name in names) or text == without_tools():
            raise UnrenderedRow(
                f"the chat template does not render tools (the row's tools {', '.join(names)} would be "
                f"left out of the prompt){_TOOLS_HINT}"
            )
    for i, m in enumerate(messages):
        if m["role"] == "tool" and m.get("content") and m["content"] not in text:
            raise UnrenderedRow(
                f"the chat template does not render tool results (messages[{i}] is left out){_TOOLS_HINT}"
            )


def render_prompt(
    messages: list[dict], tokenizer: Any, chat_template: str | None = None, tools: list[dict] | None = None
) -> list[int]:
    """Token ids of a prompt exactly as training rendered the context before an assistant turn.

    ``messages`` and ``tools`` are in OpenAI's format; a server given ``served_messages(messages)``
    and the same ``tools`` renders the same ids.
    """
    text = _apply(messages, tokenizer, chat_template, True, tools)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def end_of_sequence_ids(tokenizer: Any, model_dir: Path) -> list[int]:
    """The ids a server stops on for this model: the tokenizer's eos plus the generation config's."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id}
    if (Path(model_dir) / "generation_config.json").is_file():
        configured = GenerationConfig.from_pretrained(model_dir).eos_token_id
        ids |= set(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


# An answer the template renders as is: the token(s) right after it end the turn.
_PROBE_ANSWER = "tuneship-end-of-turn-probe"


def end_of_turn_id(tokenizer: Any, chat_template: str | None = None) -> int | None:
    """The token the chat template puts right after an assistant answer (``<|im_end|>``, ``<|eot_id|>``).

    Found by rendering a one-turn conversation and tokenizing what follows the answer; None when
    that is not a special token (a template that ends turns with plain text, or with nothing).
    """
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE_ANSWER}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=chat_template)
    at = text.rfind(_PROBE_ANSWER)
    if at < 0:
        return None
    after = tokenizer(text[at + len(_PROBE_ANSWER) :], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    special |= {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return after[0] if after and after[0] in special else None


def stop_token_ids(tokenizer: Any, model_dir: Path, chat_template: str | None = None) -> list[int]:
    """What a served model must stop on: :func:`end_of_sequence_ids` plus the template's end of turn.

    Export writes these into ``generation_config.json``; serve passes them to vLLM when the base's
    own do not include the end of turn; verify's reference stops on them.
    """
    turn = end_of_turn_id(tokenizer, chat_template)
    return sorted(set(end_of_sequence_ids(tokenizer, model_dir)) | ({turn} if turn is not None else set()))


def end_of_turn_warning(tokenizer: Any, model_dir: Path, chat_template: str | None, base: str) -> str | None:
    """One line when the template's end-of-turn token is not an end-of-sequence id of the base, else None.

    Such a base (many base checkpoints, Llama-3-style tokenizers) would write fake turns until
    ``max_tokens``; the line names both tokens and what tuneship does about it.
    """
    turn = end_of_turn_id(tokenizer, chat_template)
    eos = end_of_sequence_ids(tokenizer, model_dir)
    if turn is None or turn in eos:
        return None
    names = ", ".join(f"{tokenizer.convert_ids_to_tokens(i)} (id {i})" for i in eos) or "none"
    token = f"{tokenizer.convert_ids_to_tokens(turn)} (id {turn})"
    return (
        f"the chat template ends each answer with {token}, which is not an end-of-sequence token of "
        f"{base} (end of sequence: {names}); tuneship trains the answers to end with {token}, lists it "
        "in the export's generation_config.json eos_token_id and passes it to vLLM when serving "
        f"(other servers must stop on it too, or the model writes fake turns until max_tokens)"
    )
