"""Masking personal data in captured traffic before it is stored: emails, phone numbers, card numbers.

Each finding is replaced by a typed placeholder (``[EMAIL]``, ``[PHONE]``, ``[CARD]``), so a
training example keeps its shape ("write to [EMAIL]") without the value. The rules are chosen
to leave order numbers, dates, versions and amounts alone:

* a card number is 13-19 digits (optionally in groups split by spaces or hyphens) that starts
  like a card network's number (2-6) and passes the Luhn check;
* a phone number is an international one (``+44 20 7946 0958``, ``+1 (555) 010-0199``), a North
  American one in the 3-3-4 shape with separators (``(555) 010-0199``, ``555.010.0199``), or any
  run of 7+ digits with separators right after a word such as "phone", "call", "tel" or "mobile";
* an email is ``local@domain.tld``.

More: ``extra_patterns`` (regular expressions, each match becomes ``[REDACTED]``) and ``hook``
(``module:function``, a callable that takes the text and returns it redacted, run last).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from typing import Any

from tuneship.errors import TuneshipError

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
CARD = re.compile(r"(?<![\d-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\d-])")
PHONE = re.compile(
    r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{2,4}){2,5}(?![\d])"  # international
    r"|(?<![\w(])(?:\(\d{3}\)\s?|\d{3}[.-])\d{3}[.-]\d{4}(?![\d-])"  # North American, 3-3-4
)
CONTEXT_PHONE = re.compile(
    r"(?i)\b(phone|tel|telephone|mobile|cell|call|fax|whatsapp|sms|text)(\b[^\d\n]{0,12})"
    r"((?:\(\d{1,5}\)\s?)?\d(?:[ .-]?\d){5,14})(?![\d-])"
)
PLACEHOLDERS = ("[EMAIL]", "[PHONE]", "[CARD]", "[REDACTED]")


def luhn(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum (the card networks' check digit)."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn(digits) else match.group()


def _context_phone(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group(3))
    return f"{match.group(1)}{match.group(2)}[PHONE]" if len(digits) >= 7 else match.group()


def load_hook(spec: str) -> Callable[[str], str]:
    """The callable named by ``module:function`` (TuneshipError, one line, when it is not one)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise TuneshipError(f"redaction hook {spec!r}: name it as module:function")
    try:
        hook = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise TuneshipError(f"redaction hook {spec!r} cannot be loaded: {e}") from None
    if not callable(hook):
        raise TuneshipError(f"redaction hook {spec!r} is not callable")
    return hook


class Redactor:
    """Masks emails, phone numbers and card numbers, then ``extra_patterns``, then ``hook``."""

    def __init__(self, extra_patterns: Iterable[str] = (), hook: str = "") -> None:
        try:
            self.extra = [re.compile(p) for p in extra_patterns]
        except re.error as e:
            raise TuneshipError(f"redaction pattern {e.pattern!r}: {e}") from None
        self.hook = load_hook(hook) if hook else None

    def text(self, text: str) -> str:
        """``text`` with every finding replaced by its placeholder."""
        text = EMAIL.sub("[EMAIL]", text)
        text = CARD.sub(_card, text)
        text = PHONE.sub("[PHONE]", text)
        text = CONTEXT_PHONE.sub(_context_phone, text)
        for pattern in self.extra:
            text = pattern.sub("[REDACTED]", text)
        if self.hook is not None:
            text = str(self.hook(text))
        return text

    def messages(self, messages: Any) -> Any:
        """Chat messages with the text of every ``content`` (a string, or text parts) redacted."""
        if not isinstance(messages, list):
            return messages
        return [self._message(m) for m in messages]

    def _message(self, message: Any) -> Any:
        if not isinstance(message, dict):
            return message
        content = message.get("content")
        if isinstance(content, str):
            return {**message, "content": self.text(content)}
        if isinstance(content, list):
            parts = [
                {**p, "text": self.text(p["text"])}
                if isinstance(p, dict) and isinstance(p.get("text"), str)
                else p
                for p in content
            ]
            return {**message, "content": parts}
        return message
