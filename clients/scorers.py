"""Scorers: compare a model's answer with the references and return a number.

Each scorer declares its kind (``binary``: 0/1, ``continuous``: any float) and whether
higher is better, which decides the statistics applied to it.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Scorer:
    name: str
    kind: str  # "binary" or "continuous"
    higher_is_better: bool
    fn: Callable[[str, list[str]], float]
    description: str

    def __call__(self, output: str, references: list[str]) -> float:
        return self.fn(output, references)


def normalize(text: str) -> str:
    """Lower-case, drop punctuation and collapse whitespace."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


def _parse_json(text: str) -> object:
    text = text.strip()
    if text.startswith("```"):
        text = re.sub(r"^```\w*\n?|\n?```$", "", text).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def exact_match(output: str, references: list[str]) -> float:
    return float(any(output.strip() == r.strip() for r in references))


def normalized_match(output: str, references: list[str]) -> float:
    return float(any(normalize(output) == normalize(r) for r in references))


def json_valid(output: str, references: list[str]) -> float:
    return float(_parse_json(output) is not None)


def json_equal(output: str, references: list[str]) -> float:
    """1 when the answer parses to the same JSON value as a reference (key order ignored)."""
    parsed = _parse_json(output)
    return float(parsed is not None and any(parsed == _parse_json(r) for r in references))


def json_fields(output: str, references: list[str]) -> float:
    """Fraction of the reference object's fields that the answer gets exactly right."""
    parsed = _parse_json(output)
    best = 0.0
    for ref in references:
        expected = _parse_json(ref)
        if isinstance(expected, dict) and expected:
            got = parsed if isinstance(parsed, dict) else {}
            best = max(best, sum(got.get(k) == v for k, v in expected.items()) / len(expected))
    return best


SCORERS = {
    s.name: s
    for s in (
        Scorer("exact", "binary", True, exact_match, "answer equals a reference exactly"),
        Scorer(
            "normalized",
            "binary",
            True,
            normalized_match,
            "equal after lower-casing and dropping punctuation",
        ),
        Scorer("json_valid", "binary", True, json_valid, "answer parses as JSON"),
        Scorer("json_equal", "binary", True, json_equal, "answer's JSON equals a reference's JSON"),
        Scorer("json_fields", "continuous", True, json_fields, "fraction of reference JSON fields matched"),
    )
}


def default_scorers(references: list[str]) -> list[str]:
    """JSON scorers when the references are JSON objects, text matching otherwise."""
    if all(isinstance(_parse_json(r), dict) for r in references):
        return ["json_equal", "json_fields", "json_valid"]
    return ["exact", "normalized"]
