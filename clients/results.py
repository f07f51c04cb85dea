"""Typed results of ``tuneship eval`` and ``tuneship ab``.

``results.json`` is ``model_dump_json()`` of these models; its JSON Schema is published in
``clients/schemas/`` (``eval-results.schema.json``, ``ab-results.schema.json``) and a test keeps
it equal to ``model_json_schema(mode="serialization")``. Regenerate both after a change with::

    python -m tuneship.clients.results
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneship.clients.config import FAIL_IF_POLICIES
from tuneship.determinism import ServerDeterminism

# 2: typed models with a published JSON Schema (1: hand-built dicts).
SCHEMA_VERSION = 2
SCHEMAS = Path(__file__).parent / "schemas"

Verdict = Literal["better", "non-inferior", "worse", "inconclusive"]


class _Result(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")


class Comparison(_Result):
    """One paired comparison of an adapter with its base on one metric (see ``clients/stats.py``)."""

    metric: str
    """Scorer name (``judge_win_rate`` for the pairwise judge)."""
    kind: Literal["binary", "continuous", "judge"]
    """Which test gave ``p_value``: exact McNemar, paired permutation, or sign test."""
    base_mean: float
    """Mean score of the base (0.5 for the judge: no preference)."""
    adapter_mean: float
    """Mean score of the adapter (the judge's win rate, ties counting half)."""
    diff: float
    """``adapter_mean - base_mean``, in the metric's units."""
    ci_low: float
    """Lower bound of the paired bootstrap 95% interval of ``diff``."""
    ci_high: float
    """Upper bound of the paired bootstrap 95% interval of ``diff``."""
    p_value: float
    """Two-sided p-value (Holm-adjusted when several comparisons share it)."""
    improved: int
    """Items where the adapter scores better than the base (judge: wins)."""
    regressed: int
    """Items where the adapter scores worse than the base (judge: losses)."""
    n: int
    """Paired items compared."""
    verdict: Verdict
    """better, non-inferior (within ``margin``), worse or inconclusive at the run's alpha."""
    margin: float | None = None
    """Non-inferiority margin, in the metric's units (None: no non-inferiority verdict)."""
    higher_is_better: bool = True
    """Direction of the metric; improved/regressed and the verdict follow it."""
    improved_examples: list[str] = Field(default_factory=list)
    """Ids of a few items that improved (empty for per-tag cells)."""
    regressed_examples: list[str] = Field(default_factory=list)
    """Ids of a few items that regressed (empty for per-tag cells)."""
    noise_floor: float | None = None
    """The A/A noise floor of this metric, in its units (``NoiseFloor.floor``; None: not measured)."""
    within_noise: bool | None = None
    """``|diff| <= noise_floor``: two runs of the base alone differed this much (None: not measured)."""


class LatencySummary(_Result):
    """Streamed latency of one arm, as vLLM's serving benchmark defines it (see ``latency.py``)."""

    model: str
    concurrency: int
    """Requests in flight."""
    requests: int
    """Requests timed (failed ones excluded)."""
    failed: int
    output_tokens: int
    """Output tokens of all timed requests (the server's count)."""
    duration_s: float
    """Wall time of the whole run, seconds."""
    output_throughput: float
    """Output tokens per second over the run."""
    ttft_p50_ms: float | None = None
    ttft_p90_ms: float | None = None
    ttft_p99_ms: float | None = None
    tpot_p50_ms: float | None = None
    tpot_p90_ms: float | None = None
    tpot_p99_ms: float | None = None
    itl_p50_ms: float | None = None
    itl_p90_ms: float | None = None
    itl_p99_ms: float | None = None
    e2e_p50_ms: float | None = None
    e2e_p90_ms: float | None = None
    e2e_p99_ms: float | None = None
    samples_e2e_s: list[float] = Field(default_factory=list)
    """End-to-end latency of every timed request, seconds (for the strip plot)."""


class LengthBias(_Result):
    """How the judge's picks track answer length for one adapter (see ``clients/judge_bias.py``).

    Lengths are in characters. A *decided* comparison is an item the adapter won or lost in both
    answer orders, between answers of different length.
    """

    adapter_mean_length: float
    """Mean length of the adapter's answers, characters."""
    base_mean_length: float
    """Mean length of the base's answers, characters."""
    adapter_longer: int
    """Items where the adapter's answer is longer than the base's."""
    adapter_shorter: int
    """Items where the adapter's answer is shorter than the base's."""
    decided: int
    """Decided comparisons between answers of different length."""
    longer_won: int
    """Decided comparisons the longer answer won."""
    longer_won_share: float | None = None
    """``longer_won / decided`` (None without decided comparisons; 0.5: length plays no part)."""
    longer_won_p: float | None = None
    """Two-sided exact binomial test of ``longer_won_share`` = 0.5."""
    spearman_rho: float | None = None
    """Spearman correlation over all judged items between the length difference (adapter - base)
    and the outcome (1 win, 0.5 tie, 0 loss); None when either is constant."""
    spearman_p: float | None = None
    """Two-sided p-value of ``spearman_rho`` (scipy.stats.spearmanr)."""
    length_controlled_win_rate: float | None = None
    """Win rate implied at equal length by a logistic regression of the outcome on the normalised
    length difference (AlpacaEval's LC idea); None when the adapter's answers were not both longer and
    shorter than the base's on at least 3 items each (length and arm cannot be told apart)."""
    length_controlled_low: float | None = None
    """Lower bound of the approximate (Wald) 95% interval of ``length_controlled_win_rate``."""
    length_controlled_high: float | None = None
    """Upper bound of the approximate (Wald) 95% interval of ``length_controlled_win_rate``."""
    explains_verdict: bool = False
    """Length explains the judge's verdict: the share of decided comparisons won by the longer answer
    differs from half (``longer_won_p`` < alpha), so the judge favours one length, and the arm it
    favoured (more wins than losses, or the reverse) is the arm whose answers had that length in most
    decided comparisons. The report and the CLI warn when it is true."""


class JudgeSummary(_Result):
    """The pairwise judge's outcome for one adapter (see ``clients/judge.py``)."""

    judge_model: str
    wins: int
    ties: int
    losses: int
    position_consistency: float
    """Share of items where both answer orders agree; below 0.5 the verdict is weak evidence."""
    unparsed_replies: int
    picked_first: float | None = None
    """Share of single judgments naming an answer that named the one shown first (0.5: no position
    preference; None when no reply named one)."""
    length: LengthBias | None = None
    """How the judge's picks track answer length (None for a result written before it was measured)."""


class NoiseFloor(_Result):
    """An A/A check: the base answered twice, as two independent arms (see ``clients/noise.py``).

    Both arms send their own requests with the same settings, in one pool with the other arms;
    the repeat goes through the items from the middle, so that an item's two requests do not
    ride in the same batch. Whatever differs between them is serving noise.
    """

    arm: str
    """Label of the repeat arm; its answers are in ``answers/ARM.jsonl``, apart from the base's."""
    items: int
    """Items answered by both arms."""
    answers_differ: int
    """Items whose two answers are not identical."""
    difference_rate: float
    """``answers_differ / items``."""
    concurrency: int
    """Requests in flight in all, as the comparison ran."""
    floor: dict[str, float]
    """Per metric: the largest absolute bound of the A/A difference's 95% interval, in the metric's
    units. A difference no larger than this also appears between two runs of the same model."""
    comparisons: list[Comparison]
    """Per metric: the repeat against the base (difference, interval, p-value)."""


class EvalResult(_Result):
    """``tuneship eval``: one model scored on the data."""

    schema_version: Literal[2] = SCHEMA_VERSION
    model: str
    """Served model name."""
    items: int
    """Evaluation items scored."""
    scores: dict[str, float]
    """Mean score per scorer."""
    latency: LatencySummary | None = None
    """Streamed latency (None when ``latency_requests`` is 0)."""
    report: str | None = Field(default=None, exclude=True)
    """Path of ``report.md`` (not saved in results.json)."""


class ABResult(_Result):
    """``tuneship ab``: adapters compared with their base on the same items."""

    FAIL_IF_POLICIES: ClassVar[dict[str, tuple[str, ...]]] = FAIL_IF_POLICIES
    """The CI gate: which primary-metric verdicts make ``--fail-if POLICY`` fail (one definition,
    in ``clients/config.py``, where the CLI's choice list reads it without loading results)."""

    schema_version: Literal[2] = SCHEMA_VERSION
    base: str
    """Served name of the base model."""
    adapters: list[str]
    """Served adapter names, in the order given."""
    endpoint: str
    items: int
    """Paired items per arm."""
    alpha: float
    """Significance level."""
    margin: float | None = None
    """Non-inferiority margin, in the primary metric's units."""
    sampling: str
    """The generation settings every arm used (JSON)."""
    warnings: list[str] = Field(default_factory=list)
    primary_metric: str
    """The first scorer: the one the verdict, the per-tag table and ``--fail-if`` use."""
    comparisons: dict[str, list[Comparison]]
    """Per adapter: one comparison per scorer (then the judge's, if any)."""
    by_tag: dict[str, dict[str, Comparison]] = Field(default_factory=dict)
    """Per adapter and item tag: the primary metric, Holm-adjusted across all cells."""
    judge: dict[str, JudgeSummary] = Field(default_factory=dict)
    """Per adapter, when a judge was asked."""
    latency: dict[str, LatencySummary | None] = Field(default_factory=dict)
    """Per arm (base and adapters)."""
    latency_ratio: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Per adapter: adapter / base for the p50 and p99 latencies and the throughput."""
    noise_floor: NoiseFloor | None = None
    """The A/A check of the base (None: ``--noise-floor off``, or skipped on a deterministic server)."""
    determinism: ServerDeterminism | None = None
    """Whether the measured server had deterministic (batch-invariant) inference, as it reports it."""
    report: str | None = Field(default=None, exclude=True)
    """Path of ``report.md`` (not saved in results.json)."""

    def primary(self, adapter: str) -> Comparison:
        """The primary-metric comparison of ``adapter``."""
        return next(c for c in self.comparisons[adapter] if c.metric == self.primary_metric)

    def failing(self, policy: str) -> list[str]:
        """Adapters whose primary-metric verdict fails the CI gate ``policy`` (a key of FAIL_IF_POLICIES).

        A "better" whose difference is within the A/A noise floor (``within_noise``) counts as
        "inconclusive": two runs of the base alone differ as much, so it proves no improvement.

        Raises:
            KeyError: an unknown policy.
        """
        bad = FAIL_IF_POLICIES[policy]

        def verdict(adapter: str) -> str:
            primary = self.primary(adapter)
            return "inconclusive" if primary.verdict == "better" and primary.within_noise else primary.verdict

        return [a for a in self.comparisons if verdict(a) in bad]


PUBLISHED: dict[str, type[BaseModel]] = {
    "eval-results.schema.json": EvalResult,
    "ab-results.schema.json": ABResult,
}


def json_schema(model: type[BaseModel]) -> dict:
    """The JSON Schema of the results.json a model writes."""
    return model.model_json_schema(mode="serialization")


def write_schemas(folder: Path = SCHEMAS) -> list[Path]:
    """Write the published schemas (run after changing a result model)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in PUBLISHED.items():
        path = folder / name
        path.write_text(json.dumps(json_schema(model), indent=2) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_schemas():
        print(written)
