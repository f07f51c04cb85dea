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


def exact_match(output: str, references: list[str], options: str = "strip") -> float:
    """Equality after the chosen normalisations: strip, casefold, nopunct, spaces (comma-separated)."""
    chosen = {o.strip() for o in options.split(",") if o.strip()}
    unknown = chosen - {"strip", "casefold", "nopunct", "spaces"}
    if unknown:
        raise ValueError(f"exact: unknown option(s) {', '.join(sorted(unknown))}")

    def norm(text: str) -> str:
        if "casefold" in chosen:
            text = text.casefold()
        if "nopunct" in chosen:
            text = text.translate(str.maketrans("", "", string.punctuation))
        if "spaces" in chosen:
            text = re.sub(r"\s+", " ", text)
        return text.strip() if "strip" in chosen or "spaces" in chosen else text

    return float(any(norm(output) == norm(r) for r in references))


def normalized_match(output: str, references: list[str]) -> float:
    return float(any(normalize(output) == normalize(r) for r in references))


def contains(output: str, references: list[str]) -> float:
    return float(any(r.strip() and r.strip() in output for r in references))


def regex_match(output: str, references: list[str], pattern: str = "") -> float:
    """The answer matches the pattern given (``regex:PATTERN``), else any reference used as a pattern."""
    patterns = [pattern] if pattern else references
    return float(any(re.search(p, output) for p in patterns))


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


def json_schema(output: str, references: list[str], schema_file: str = "") -> float:
    """1 when the answer is JSON valid under the schema in ``json_schema:FILE``."""
    import jsonschema

    schema = json.loads(open(schema_file, encoding="utf-8").read())
    parsed = _parse_json(output)
    if parsed is None:
        return 0.0
    return float(jsonschema.Draft202012Validator(schema).is_valid(parsed))


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def numeric(output: str, references: list[str], tolerance: str = "1e-6") -> float:
    """The last number in the answer is within a relative tolerance of a reference number."""
    found = _NUMBER.findall(output.replace(",", ""))
    if not found:
        return 0.0
    value, tol = float(found[-1]), float(tolerance)
    for ref in references:
        numbers = _NUMBER.findall(ref.replace(",", ""))
        if numbers and abs(value - float(numbers[-1])) <= tol * max(1.0, abs(float(numbers[-1]))):
            return 1.0
    return 0.0


def rouge_l(output: str, references: list[str]) -> float:
    """ROUGE-L F1 (Google's rouge-score), best over the references."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return max(scorer.score(r, output)["rougeL"].fmeasure for r in references)


def bleu(output: str, references: list[str]) -> float:
    """Sentence BLEU (sacrebleu, exponential smoothing) against all references, 0-100."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(output, references).score)


def chrf(output: str, references: list[str]) -> float:
    """Sentence chrF (sacrebleu) against all references, 0-100."""
    import sacrebleu

    return float(sacrebleu.sentence_chrf(output, references).score)


_SCORERS = (
    Scorer(
        "exact", "binary", True, exact_match, "equal to a reference (exact:strip,casefold,nopunct,spaces)"
    ),
    Scorer(
        "normalized", "binary", True, normalized_match, "equal after lower-casing and dropping punctuation"
    ),
    Scorer("contains", "binary", True, contains, "a reference occurs in the answer"),
    Scorer("regex", "binary", True, regex_match, "matches regex:PATTERN (default: references as patterns)"),
    Scorer("json_valid", "binary", True, json_valid, "answer parses as JSON"),
    Scorer("json_equal", "binary", True, json_equal, "answer's JSON equals a reference's JSON"),
    Scorer("json_fields", "continuous", True, json_fields, "fraction of reference JSON fields matched"),
    Scorer("json_schema", "binary", True, json_schema, "answer is valid under json_schema:FILE"),
    Scorer("numeric", "binary", True, numeric, "last number within numeric:REL_TOL of the reference's"),
    Scorer("rouge_l", "continuous", True, rouge_l, "ROUGE-L F1 (rouge-score)"),
    Scorer("bleu", "continuous", True, bleu, "sentence BLEU (sacrebleu)"),
    Scorer("chrf", "continuous", True, chrf, "sentence chrF (sacrebleu)"),
)
SCORERS = {s.name: s for s in _SCORERS}


def make_scorer(spec: str) -> Scorer:
    """``name`` or ``name:argument`` (e.g. ``regex:^\\{``, ``numeric:0.01``, ``json_schema:s.json``)."""
    name, _, argument = spec.partition(":")
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; choose from {', '.join(SCORERS)}")
    base = SCORERS[name]
    if not argument:
        if name == "json_schema":
            raise ValueError("json_schema needs a schema file: json_schema:FILE")
        return base
    if name not in ("exact", "regex", "json_schema", "numeric"):
        raise ValueError(f"scorer {name} takes no argument")
    if name == "exact":
        exact_match("", [""], argument)  # validates the options now, not per item
    if name == "regex":
        re.compile(argument)
    if name == "json_schema":
        json.loads(open(argument, encoding="utf-8").read())
    if name == "numeric":
        float(argument)
    return Scorer(
        spec, base.kind, base.higher_is_better, lambda o, r: base.fn(o, r, argument), base.description
    )


def default_scorers(references: list[str]) -> list[str]:
    """JSON scorers when the references are JSON objects, text matching otherwise."""
    if all(isinstance(_parse_json(r), dict) for r in references):
        return ["json_equal", "json_fields", "json_valid"]
    return ["exact", "normalized", "rouge_l"]
