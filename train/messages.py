"""Chat messages in OpenAI's fine-tuning format, checked and normalised, one row at a time.

Accepted, as OpenAI's chat fine-tuning accepts it (``{"messages": [...], "tools"?: [...]}``):

* roles ``system``, ``developer``, ``user``, ``assistant`` and ``tool``; the legacy ``function``
  role and an assistant's ``function_call`` become ``tool`` and ``tool_calls``, and a row's
  legacy ``functions`` become ``tools``;
* ``content`` as a string or a list of ``{"type": "text", "text": ...}`` parts, joined with
  newlines as vLLM joins them for a template that takes strings (image, audio and file parts
  are refused: a text model cannot train on them); ``null`` on an assistant turn with tool calls;
* per message ``name``; per assistant message ``weight`` (0 or 1), ``tool_calls`` and ``refusal``
  (its text is the answer); ``tool`` messages answer a call through ``tool_call_id``.

A normalised message is ``{"role", "content": str, "weight": 0|1}`` plus ``name``,
``tool_calls`` (arguments kept as the JSON string of the wire format) or ``tool_call_id`` where
given. Turn order: system and developer messages first, then user and assistant alternating; an
assistant turn with tool calls is followed by its tool results, then by an assistant turn. Every
refusal is a :class:`RowError` naming the message (``messages[1]: unknown key 'contnet' (did you
mean 'content'?)``). Whether the model's chat template renders tools is checked when the row is
rendered (:mod:`tuneship.chat`), since it depends on the template.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from tuneship.chat import text_of
from tuneship.errors import RowError

ROLES = ("system", "developer", "user", "assistant", "tool")
SYSTEM_ROLES = ("system", "developer")
_COMMON = ("role", "content", "name")
# The keys OpenAI's fine-tuning format allows on a message of each role (``function``: legacy).
KEYS: dict[str, tuple[str, ...]] = {
    "system": _COMMON,
    "developer": _COMMON,
    "user": _COMMON,
    "assistant": (*_COMMON, "weight", "tool_calls", "function_call", "refusal"),
    "tool": ("role", "content", "tool_call_id"),
    "function": _COMMON,
}
ALL_KEYS = tuple(dict.fromkeys(key for keys in KEYS.values() for key in keys))
ROW_KEYS = ("messages", "tools", "functions", "parallel_tool_calls")
NOT_TEXT = {
    "image_url": "an image",
    "input_audio": "audio",
    "audio": "audio",
    "file": "a file",
}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
}


def _did_you_mean(word: str, choices: tuple[str, ...], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=cutoff)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_keys(obj: dict, allowed: tuple[str, ...], where: str, vocabulary: tuple[str, ...]) -> None:
    """Refuse a key outside ``allowed``; a near miss of a ``vocabulary`` word is named as such."""
    for key in obj:
        if key in allowed:
            continue
        if key in vocabulary:
            owners = [role for role, keys in KEYS.items() if key in keys and role != "function"]
            raise RowError(f"{where}: '{key}' belongs on {'/'.join(owners)} messages only")
        raise RowError(f"{where}: unknown key {str(key)!r}{_did_you_mean(str(key), vocabulary)}")


def _content(m: dict, where: str) -> str | None:
    """A message's text: a string, or text parts joined with newlines (None when absent)."""
    content = m.get("content")
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RowError(f"{where}: content is not a string or a list of text parts ({type(content).__name__})")
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in NOT_TEXT:
            raise RowError(
                f"{where}: content[{j}] is {NOT_TEXT[kind]} ({kind!r} part); "
                "only text parts can be trained on a text model"
            )
        if kind != "text" or not isinstance(part.get("text"), str):
            raise RowError(f'{where}: content[{j}] is not a text part ({{"type": "text", "text": "..."}})')
    return text_of(content)


def _arguments(value: Any, where: str) -> str:
    """A call's arguments as the JSON string of the wire format; they must be a JSON object."""
    parsed = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError(f"{where}: arguments are not valid JSON ({e.msg})") from None
    if not isinstance(parsed, dict):
        raise RowError(f"{where}: arguments must be a JSON object, got {type(parsed).__name__}")
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _function(fn: Any, where: str) -> dict:
    if not isinstance(fn, dict):
        raise RowError(f"{where}: 'function' is not an object")
    _check_keys(fn, ("name", "arguments"), where, ("name", "arguments"))
    if not isinstance(fn.get("name"), str) or not fn["name"].strip():
        raise RowError(f"{where}: the function has no name")
    return {"name": fn["name"], "arguments": _arguments(fn.get("arguments", "{}"), where)}


def _tool_calls(m: dict, where: str, index: int) -> list[dict]:
    """An assistant's ``tool_calls`` (or legacy ``function_call``), normalised; [] when none."""
    calls, legacy = m.get("tool_calls"), m.get("function_call")
    if calls and legacy:
        raise RowError(f"{where}: both tool_calls and the legacy function_call; keep tool_calls")
    if legacy is not None:  # one call; the id lets the legacy ``function`` result refer to it
        function = _function(legacy, f"{where}.function_call")
        return [{"id": f"call_{index}", "type": "function", "function": function}]
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise RowError(f"{where}: tool_calls is not a list")
    out = []
    for k, call in enumerate(calls):
        here = f"{where}.tool_calls[{k}]"
        if not isinstance(call, dict):
            raise RowError(f"{here} is not an object")
        _check_keys(call, ("id", "type", "function"), here, ("id", "type", "function"))
        if call.get("type", "function") != "function":
            raise RowError(f"{here}: type {call.get('type')!r}; only 'function' calls exist")
        if "id" in call and not isinstance(call["id"], str):
            raise RowError(f"{here}: id is not a string")
        normal = {"type": "function", "function": _function(call.get("function"), here)}
        out.append({"id": call["id"], **normal} if "id" in call else normal)
    return out


def _weight(m: dict, where: str) -> int:
    weight = m.get("weight", 1)
    if isinstance(weight, bool) or weight not in (0, 1):
        raise RowError(f"{where}: weight must be 0 or 1, got {json.dumps(weight)}")
    return int(weight)


def _message(m: Any, key: str, i: int, last_calls: list[dict]) -> dict:
    """One message normalised; ``last_calls`` are the tool calls of the assistant turn before."""
    where = f"{key}[{i}]"
    if not isinstance(m, dict):
        raise RowError(f"{where} is not an object")
    role = m.get("role")
    if not isinstance(role, str) or role not in KEYS:
        _check_keys(m, ALL_KEYS, where, ALL_KEYS)  # a misspelt 'role' is named before its absence
        choices = ROLES + ("function",)
        if role is None:
            raise RowError(f"{where} has no role (one of {', '.join(ROLES)})")
        raise RowError(
            f"{where} has unknown role {role!r}{_did_you_mean(str(role), choices)} "
            f"(expected one of {', '.join(ROLES)})"
        )
    _check_keys(m, KEYS[role], f"{where} ({role})", ALL_KEYS)
    where = f"{where} ({role})"
    content = _content(m, where)
    out: dict[str, Any] = {"role": role, "content": content, "weight": 0}
    if "name" in m:
        if not isinstance(m["name"], str) or not m["name"].strip():
            raise RowError(f"{where}: name is not a non-empty string")
        out["name"] = m["name"]
    if role == "assistant":
        return _assistant(m, out, where, i)
    if role == "function":  # legacy result: answers the call of that name in the turn before
        if "name" not in out:
            raise RowError(f"{where} has no name (the function whose result it is)")
        calls = [c for c in last_calls if c["function"]["name"] == out["name"]]
        if not calls:
            raise RowError(f"{where}: answers function {out['name']!r}, which the turn before did not call")
        out = {"role": "tool", "content": content or "", "weight": 0}
        if "id" in calls[0]:
            out["tool_call_id"] = calls[0]["id"]
    elif role == "tool":
        call_id = m.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise RowError(f"{where}: no tool_call_id (the id of the call it answers)")
        made = [c["id"] for c in last_calls if "id" in c]
        if made and call_id not in made:
            raise RowError(
                f"{where}: tool_call_id {call_id!r} matches no call of the turn before ({', '.join(made)})"
            )
        out.update(content=content or "", tool_call_id=call_id)
    elif content is None:
        raise RowError(f"{where} has no content")
    elif not content.strip():
        raise RowError(f"{where} has empty content")
    return out


def _assistant(m: dict, out: dict, where: str, i: int) -> dict:
    refusal = m.get("refusal")
    if refusal is not None:
        if not isinstance(refusal, str) or out["content"]:
            raise RowError(f"{where}: refusal must be a string, given instead of content")
        out["content"] = refusal
    calls = _tool_calls(m, where, i)
    if out["content"] is None and not calls:
        raise RowError(f"{where} has neither content nor tool_calls (nothing to learn from this turn)")
    if not calls and not out["content"].strip():
        raise RowError(f"{where} has empty content")
    out["content"] = out["content"] or ""
    out["weight"] = _weight(m, where)
    if calls:
        out["tool_calls"] = calls
    return out


# What may follow each kind of turn (after the leading system and developer messages).
_NEXT = {
    "start": ("user",),
    "user": ("assistant",),
    "assistant": ("user",),
    "calls": ("tool",),  # an assistant turn with tool calls
    "tool": ("tool", "assistant"),
}


def _check_order(clean: list[dict], key: str, prompt: bool = False) -> None:
    state = "start"
    first = next((i for i, m in enumerate(clean) if m["role"] not in SYSTEM_ROLES), len(clean))
    for i in range(first, len(clean)):
        role = clean[i]["role"]
        if role not in _NEXT[state]:
            rule = (
                "system and developer first, then user and assistant alternating; "
                "an assistant's tool calls are followed by their tool results"
            )
            expected = " or ".join(_NEXT[state])
            raise RowError(f"wrong turn order: {key}[{i}] is {role}, expected {expected} ({rule})")
        state = "calls" if clean[i].get("tool_calls") else role
    if prompt:  # the context of a preference pair: its answers follow
        if first == len(clean) or state not in ("user", "tool"):
            raise RowError(f"'{key}' must end with a user turn or tool results (the answers follow it)")
        return
    if first == len(clean) or clean[-1]["role"] != "assistant":
        raise RowError("no assistant turn at the end (nothing to learn)")
    if not any(m["weight"] for m in clean if m["role"] == "assistant"):
        raise RowError("every assistant turn has weight 0 (nothing to learn)")


def check_messages(messages: Any, key: str = "messages", prompt: bool = False) -> list[dict]:
    """Check and normalise one conversation (see the module docstring for what is accepted).

    ``key`` names the list in messages (``messages[2] (tool): ...``); ``prompt``: the conversation
    is a preference pair's prompt, which ends with a user turn or tool results instead of an
    answer. Raises RowError with the first problem found.
    """
    if not isinstance(messages, list) or not messages:
        raise RowError(f"'{key}' must be a non-empty list")
    clean: list[dict] = []
    last_calls: list[dict] = []
    for i, m in enumerate(messages):
        clean.append(_message(m, key, i, last_calls))
        if clean[-1]["role"] == "assistant":
            last_calls = clean[-1].get("tool_calls", [])
    _check_order(clean, key, prompt)
    return clean


def check_answer(messages: Any, key: str) -> dict:
    """One answer of a preference pair, normalised and trained (weight 1): a list holding exactly
    one assistant message (OpenAI's ``preferred_output``, a conversational ``chosen``). Raises RowError."""
    if not isinstance(messages, list) or not messages:
        raise RowError(f"'{key}' must be a list holding one assistant message")
    if len(messages) != 1:
        raise RowError(f"'{key}' holds {len(messages)} messages; an answer is exactly one assistant message")
    message = _message(messages[0], key, 0, [])
    if message["role"] != "assistant":
        raise RowError(f"{key}[0] is a {message['role']} message; an answer is an assistant message")
    return {**message, "weight": 1}


def _tool(tool: Any, where: str) -> dict:
    """One tool, as vLLM's request model serialises it for the template (so that training and the
    server render the same prompt): description and parameters present, None when not given."""
    if not isinstance(tool, dict):
        raise RowError(f"{where} is not an object")
    _check_keys(tool, ("type", "function"), where, ("type", "function"))
    if tool.get("type", "function") != "function":
        raise RowError(f"{where}: type {tool.get('type')!r}; only 'function' tools exist")
    fn = tool.get("function")
    if not isinstance(fn, dict):
        raise RowError(f"{where}: 'function' is not an object")
    allowed = ("name", "description", "parameters", "strict")
    _check_keys(fn, allowed, f"{where}.function", allowed)
    if not isinstance(fn.get("name"), str) or not fn["name"].strip():
        raise RowError(f"{where}: the function has no name")
    if not isinstance(fn.get("description", ""), (str, type(None))):
        raise RowError(f"{where}: description is not a string")
    if not isinstance(fn.get("parameters", {}), (dict, type(None))):
        raise RowError(f"{where}: parameters is not a JSON schema object")
    out = {"name": fn["name"], "description": fn.get("description"), "parameters": fn.get("parameters")}
    if fn.get("strict") is not None:
        out["strict"] = fn["strict"]
    return {"type": "function", "function": out}


def check_tools(row: dict) -> list[dict] | None:
    """A messages row's ``tools`` (or legacy ``functions``, converted), normalised; None when none.

    A row key close to one of the format's keys (``tool``, ``function``) is refused as a likely
    misspelling; other extra keys (ids, metadata) are left alone. Raises RowError.
    """
    for key in row:
        if key not in ROW_KEYS and (hint := _did_you_mean(str(key), ROW_KEYS, cutoff=0.8)):
            raise RowError(f"unknown key {str(key)!r}{hint}")
    tools, functions = row.get("tools"), row.get("functions")
    if tools and functions:
        raise RowError("both 'tools' and the legacy 'functions'; keep 'tools'")
    if functions:
        if not isinstance(functions, list):
            raise RowError("'functions' is not a list")
        return [
            _tool({"type": "function", "function": f}, f"functions[{j}]") for j, f in enumerate(functions)
        ]
    if not tools:
        return None
    if not isinstance(tools, list):
        raise RowError("'tools' is not a list")
    return [_tool(tool, f"tools[{j}]") for j, tool in enumerate(tools)]


def from_sharegpt(row: dict) -> list[dict]:
    """ShareGPT ``conversations`` (``from``/``value`` turns) as checked messages."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("'conversations' must be a non-empty list")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError(f"conversations[{i}] is not an object")
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise RowError(
                f"conversations[{i}] has unknown speaker {speaker!r} "
                f"(expected one of {', '.join(SHAREGPT_ROLES)})"
            )
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": turn.get("value")})
    return check_messages(messages, key="conversations")
