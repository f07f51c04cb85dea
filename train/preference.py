"""Preference pairs (DPO data), checked and normalised one row at a time.

Two shapes are read, detected by their keys like every other format (:mod:`tuneship.train.data`):

* ``openai-dpo``, OpenAI's preference fine-tuning format::

      {"input": {"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool},
       "preferred_output": [{"role": "assistant", ...}],
       "non_preferred_output": [{"role": "assistant", ...}]}

* ``preference``, Hugging Face's (TRL's) ``prompt``/``chosen``/``rejected``: each a plain string or
  a list of messages (conversational); without ``prompt``, ``chosen`` and ``rejected`` are whole
  conversations and their shared leading messages are the prompt (TRL's implicit prompt).

The prompt is checked as chat messages are (:mod:`tuneship.train.messages`: roles, content parts,
tools, turn order) and must end with a user turn or tool results; each answer is exactly one
assistant message. A pair whose answers are identical teaches nothing and is refused.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from tuneship.errors import RowError
from tuneship.train.messages import check_answer, check_messages, check_tools

PREFERENCE_FORMATS = ("openai-dpo", "preference")
OPENAI_KEYS = ("input", "preferred_output", "non_preferred_output")
HF_KEYS = ("prompt", "chosen", "rejected")


@dataclass
class PreferenceExample:
    """A prompt with a preferred (``chosen``) and a non-preferred (``rejected``) answer.

    ``prompt`` holds normalised messages (context only: weight 0); each answer is one normalised
    assistant message (weight 1). ``where`` is the ``file:line`` it came from.
    """

    where: str
    prompt: list[dict]
    chosen: dict
    rejected: dict
    tools: list[dict] | None = None

    def conversation(self, answer: dict) -> list[dict]:
        """The prompt followed by ``answer``: what the chat template renders."""
        return [*self.prompt, answer]


def to_preference(row: dict, fmt: str, where: str) -> PreferenceExample:
    """One checked preference pair of format ``fmt`` (``openai-dpo`` or ``preference``), or RowError."""
    if fmt == "openai-dpo":
        prompt, chosen, rejected, tools = _from_openai(row)
        names = ("preferred_output", "non_preferred_output")
    else:
        prompt, chosen, rejected, tools = _from_hf(row)
        names = ("chosen", "rejected")
    if _answer_key(chosen) == _answer_key(rejected):
        raise RowError(f"'{names[0]}' and '{names[1]}' are the same answer (nothing to prefer)")
    return PreferenceExample(where, prompt, chosen, rejected, tools)


def _answer_key(message: dict) -> tuple:
    return (message["content"].strip(), repr(message.get("tool_calls")))


def _known_keys(row: dict, expected: tuple[str, ...]) -> None:
    """Refuse a key that looks like a misspelling of one of ``expected`` (other keys: ids, metadata)."""
    for key in row:
        if key in expected:
            continue
        close = difflib.get_close_matches(str(key), expected, n=1, cutoff=0.8)
        if close:
            raise RowError(f"unknown key {str(key)!r} (did you mean '{close[0]}'?)")


def _required(row: dict, key: str) -> Any:
    if row.get(key) is None:
        raise RowError(f"missing field '{key}'")
    return row[key]


def _from_openai(row: dict) -> tuple[list[dict], dict, dict, list[dict] | None]:
    _known_keys(row, OPENAI_KEYS)
    given = _required(row, "input")
    if not isinstance(given, dict):
        raise RowError("'input' is not an object (it holds 'messages' and optional 'tools')")
    prompt = check_prompt(given.get("messages"), "input.messages")
    chosen = check_answer(_required(row, "preferred_output"), "preferred_output")
    rejected = check_answer(_required(row, "non_preferred_output"), "non_preferred_output")
    return prompt, chosen, rejected, check_tools(given)


def _from_hf(row: dict) -> tuple[list[dict], dict, dict, list[dict] | None]:
    _known_keys(row, HF_KEYS)
    chosen, rejected = _required(row, "chosen"), _required(row, "rejected")
    tools = check_tools({"tools": row["tools"]}) if row.get("tools") else None
    if row.get("prompt") is None:
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise RowError("missing field 'prompt' (only conversational chosen/rejected lists imply one)")
        chosen, rejected, prompt_messages = _split_implicit(chosen, rejected)
    else:
        prompt_messages = row["prompt"]
        if isinstance(prompt_messages, str):
            if not prompt_messages.strip():
                raise RowError("field 'prompt' is empty")
            prompt_messages = [{"role": "user", "content": prompt_messages}]
    prompt = check_prompt(prompt_messages, "prompt")
    return prompt, _hf_answer(chosen, "chosen"), _hf_answer(rejected, "rejected"), tools


def _split_implicit(chosen: list, rejected: list) -> tuple[list, list, list]:
    """Whole conversations sharing their leading messages: (chosen tail, rejected tail, shared prompt)."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise RowError("missing field 'prompt', and 'chosen' and 'rejected' share no leading messages")
    return chosen[shared:], rejected[shared:], chosen[:shared]


def _hf_answer(value: Any, key: str) -> dict:
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"field '{key}' is empty")
        value = [{"role": "assistant", "content": value}]
    return check_answer(value, key)


def check_prompt(messages: Any, key: str) -> list[dict]:
    """The prompt of a pair: checked chat messages ending with a user turn or tool results, every
    turn context only (weight 0). Raises RowError."""
    clean = check_messages(messages, key=key, prompt=True)
    return [{**m, "weight": 0} for m in clean]
