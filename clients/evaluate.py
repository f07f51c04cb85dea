"""Score one model, or A/B compare adapters with their base, through the OpenAI API.

    tuneship eval --endpoint URL --model NAME --data FILE
    tuneship ab   --endpoint URL --base NAME --adapter NAME --data FILE

Works against any OpenAI-compatible server: models are discovered through
``/v1/models``; an adapter whose ``parent`` is not the base is refused.

An A/B comparison: :func:`run_arms` (answers per arm) -> :func:`score` (per-item scores)
-> :func:`compare_arms` (paired statistics, per tag, judge, Holm) -> latency per arm ->
:func:`assemble` (the typed :class:`ABResult`) -> reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tuneship.clients.config import EvalSettings
from tuneship.clients.data import EvalItem, load_items
from tuneship.clients.judge import check_judge, judge_pairs, judge_summary
from tuneship.clients.judge_bias import length_warning
from tuneship.clients.latency import measure_latency
from tuneship.clients.noise import (
    mark_within_noise,
    noise_floor,
    repeat_label,
    repeat_order,
    server_determinism,
    wants_repeat,
)
from tuneship.clients.report import write_ab_report, write_eval_report
from tuneship.clients.results import (
    ABResult,
    Comparison,
    EvalResult,
    JudgeSummary,
    LatencySummary,
    NoiseFloor,
)
from tuneship.clients.runner import ArmPlan, generate, generate_arms, list_models
from tuneship.clients.scorers import Scorer, default_scorers, make_scorer
from tuneship.clients.stats import adjust_holm, compare, judge_compare
from tuneship.errors import EvalError

__all__ = ["EvalSettings", "ab_compare", "check_adapters", "evaluate"]

log = logging.getLogger(__name__)

# When an adapter answers byte-for-byte like the base on at least this share of
# items, it is most likely not applied at all (wrong name, served without LoRA).
IDENTICAL_WARNING = 0.9
EXAMPLE_IDS = 5


@dataclass
class Arms:
    """What every arm (the base, then each adapter) produced on the same items."""

    base: str
    adapters: list[str]
    items: list[EvalItem]
    answers: dict[str, dict[str, dict]]
    """arm -> item id -> answer record (``output``, ``finish_reason``, ...)."""
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """arm -> metric -> one score per item, in item order."""
    repeat: str | None = None
    """Label of the A/A arm (the base answering again, apart: ``clients/noise.py``), if any."""

    @property
    def models(self) -> list[str]:
        """The served models, base first, each once (an A/A check names the base twice)."""
        return list(dict.fromkeys([self.base, *self.adapters]))

    @property
    def names(self) -> list[str]:
        """Every arm: the models, then the A/A repeat of the base."""
        return self.models + ([self.repeat] if self.repeat else [])

    def arm(self, adapter: str) -> str:
        """The arm compared with the base for ``adapter``: the A/A repeat when it is the base."""
        return self.repeat if adapter == self.base and self.repeat else adapter


@dataclass
class ArmComparisons:
    """The statistics of an A/B comparison, per adapter."""

    comparisons: dict[str, list[Comparison]]
    by_tag: dict[str, dict[str, Comparison]]
    judge: dict[str, JudgeSummary]


def _scorers(settings: EvalSettings, items: list[EvalItem]) -> list[Scorer]:
    specs = settings.scorers or default_scorers([r for item in items for r in item.references])
    try:
        return [make_scorer(spec) for spec in specs]
    except (ValueError, OSError) as e:
        raise EvalError(f"scorer: {e}") from None


def _score(items: list[EvalItem], answers: dict[str, dict], scorers: list[Scorer]) -> dict[str, list[float]]:
    return {s.name: [s(answers[item.id]["output"], item.references) for item in items] for s in scorers}


def _run_arm(settings: EvalSettings, items: list[EvalItem], model: str) -> dict[str, dict]:
    from tqdm import tqdm

    out = Path(settings.out) / "answers" / f"{model}.jsonl"
    with tqdm(total=len(items), desc=model, unit="item") as bar:
        return generate(
            items,
            model,
            settings.endpoint,
            out,
            settings.sampling,
            settings.api_key,
            settings.concurrency,
            settings.timeout,
            settings.retries,
            progress=bar.update,
        )


def _latency(settings: EvalSettings, items: list[EvalItem], model: str) -> LatencySummary | None:
    """Streamed, fresh requests (never the recorded answers) at the run's concurrency."""
    if settings.latency_requests <= 0:
        return None
    prompts = [item.messages for item in items[: settings.latency_requests]]
    s = settings
    result = measure_latency(s.endpoint, model, prompts, s.concurrency, s.sampling.max_tokens, s.api_key)
    return LatencySummary(**result.summary(), samples_e2e_s=[round(t.e2e, 4) for t in result.timings])


def evaluate(settings: EvalSettings, model: str) -> EvalResult:
    """Score one model on the data; writes answers and the reports under ``settings.out``.

    Raises:
        EvalError: the model is not served, the server is unreachable, or the data is invalid.
    """
    items = load_items(settings.data, settings.limit)  # bad data is named before the server is asked
    models = list_models(settings.endpoint, settings.api_key)
    if model not in models:
        raise EvalError(f"model {model!r} is not served at {settings.endpoint} (served: {', '.join(models)})")
    scorers = _scorers(settings, items)
    answers = _run_arm(settings, items, model)
    scores = _score(items, answers, scorers)
    result = EvalResult(
        model=model,
        items=len(items),
        scores={n: sum(v) / len(v) for n, v in scores.items()},
        latency=_latency(settings, items, model),
    )
    result.report = str(write_eval_report(Path(settings.out), result, items, answers, scores))
    return result


def check_adapters(models: dict[str, dict], base: str, adapters: list[str]) -> None:
    """Refuse names that are not served, and adapters whose ``parent`` is another base.

    The "base" may itself be an adapter (a DPO run against the SFT adapter it started from, a new
    version against the one in production): then adapters of the same base model compare with it.

    Raises:
        EvalError: naming the problem and what is served.
    """
    missing = [m for m in [base, *adapters] if m not in models]
    if missing:
        raise EvalError(f"not served: {', '.join(missing)} (served: {', '.join(models)})")
    comparable = {base, models[base].get("parent")} - {None}
    for name in adapters:
        parent = models[name].get("parent")
        if name != base and parent is not None and parent not in comparable:
            raise EvalError(f"adapter {name!r} belongs to {parent!r}, not to the base {base!r}")


def run_arms(
    settings: EvalSettings, items: list[EvalItem], base: str, adapters: list[str], repeat: bool = False
) -> Arms:
    """Answers of the base, every adapter and (``repeat``, or the base named as an adapter) an A/A arm.

    The arms take turns in one pool of ``settings.concurrency`` requests
    (:func:`~tuneship.clients.runner.generate_arms`); each writes ``answers/ARM.jsonl``.

    Raises:
        EvalError: an adapter is named like the A/A arm, or a request failed.
    """
    from tqdm import tqdm

    arms = Arms(base, adapters, items, {})
    if repeat or base in adapters:
        arms.repeat = repeat_label(base)
        if arms.repeat in adapters:
            raise EvalError(f"{arms.repeat!r} is the A/A arm's name; serve the adapter under another name")
    folder = Path(settings.out) / "answers"
    plans = {model: ArmPlan(model, folder / f"{model}.jsonl") for model in arms.models}
    if arms.repeat:
        plans[arms.repeat] = ArmPlan(base, folder / f"{arms.repeat}.jsonl", repeat_order(len(items)))
    s = settings
    with tqdm(total=len(items) * len(plans), desc=", ".join(plans), unit="answer") as bar:
        arms.answers = generate_arms(
            items, plans, s.endpoint, s.sampling, s.api_key, s.concurrency, s.timeout, s.retries, bar.update
        )
    return arms


def score(arms: Arms, scorers: list[Scorer]) -> Arms:
    """Fill ``arms.scores``: every scorer on every arm's answers."""
    arms.scores = {arm: _score(arms.items, answers, scorers) for arm, answers in arms.answers.items()}
    return arms


def _compare_one(arms: Arms, adapter: str, scorer: Scorer, alpha: float, margin: float | None) -> Comparison:
    base, ours = arms.scores[arms.base][scorer.name], arms.scores[arms.arm(adapter)][scorer.name]
    c = compare(scorer.name, scorer.kind, base, ours, alpha, scorer.higher_is_better, margin)
    sign = 1 if scorer.higher_is_better else -1
    gains = [(item.id, sign * (a - b)) for item, b, a in zip(arms.items, base, ours, strict=True)]
    c.improved_examples = [i for i, gain in gains if gain > 0][:EXAMPLE_IDS]
    c.regressed_examples = [i for i, gain in gains if gain < 0][:EXAMPLE_IDS]
    return c


def _by_tag(
    arms: Arms, scorer: Scorer, alpha: float, margin: float | None
) -> dict[str, dict[str, Comparison]]:
    """The primary metric per tag and adapter, Holm-adjusted across all these cells."""
    tags = sorted({t for item in arms.items for t in item.tags})
    cells: dict[str, dict[str, Comparison]] = {}
    for adapter in arms.adapters:
        for tag in tags:
            idx = [k for k, item in enumerate(arms.items) if tag in item.tags]
            b = [arms.scores[arms.base][scorer.name][k] for k in idx]
            a = [arms.scores[arms.arm(adapter)][scorer.name][k] for k in idx]
            cells.setdefault(adapter, {})[tag] = compare(
                scorer.name, scorer.kind, b, a, alpha, scorer.higher_is_better, margin
            )
    flat = [c for per_tag in cells.values() for c in per_tag.values()]
    if len(flat) > 1:
        adjust_holm(flat, alpha)
    return cells


def _judge(settings: EvalSettings, arms: Arms, adapter: str, alpha: float) -> tuple[Comparison, JudgeSummary]:
    """The pairwise judge on one adapter; its outcomes join ``arms.scores`` as ``judge_win_rate``."""
    s = settings
    verdicts = judge_pairs(
        arms.items,
        arms.answers[arms.base],
        arms.answers[arms.arm(adapter)],
        s.judge_endpoint or "",
        s.judge_model or "",
        s.judge_api_key,
        s.concurrency,
        s.timeout,
        s.retries,
    )
    outcomes = [verdicts.outcomes[i.id] for i in arms.items]
    arms.scores[arms.arm(adapter)]["judge_win_rate"] = outcomes
    return judge_compare(outcomes, alpha, s.margin), judge_summary(verdicts, alpha)


def compare_arms(settings: EvalSettings, arms: Arms, scorers: list[Scorer], alpha: float) -> ArmComparisons:
    """Paired statistics of every adapter against the base: per metric, per tag and by the judge.

    With more than one adapter, p-values are Holm-adjusted across adapters per metric.
    """
    comparisons = {
        a: [_compare_one(arms, a, s, alpha, settings.margin) for s in scorers] for a in arms.adapters
    }
    by_tag = _by_tag(arms, scorers[0], alpha, settings.margin)
    judge = {}
    if settings.judge_endpoint and settings.judge_model:
        for adapter in arms.adapters:
            judged, judge[adapter] = _judge(settings, arms, adapter, alpha)
            comparisons[adapter].append(judged)
    if len(comparisons) > 1:
        for metric in {c.metric for cs in comparisons.values() for c in cs}:
            adjust_holm([c for cs in comparisons.values() for c in cs if c.metric == metric], alpha)
    return ArmComparisons(comparisons, by_tag, judge)


def _warnings(arms: Arms, judge: dict[str, JudgeSummary]) -> list[str]:
    """An adapter that answers like its base (probably not applied); a judge that follows positions
    or answer length (the rule: ``clients/judge_bias.py``)."""
    warnings = []
    base = arms.answers[arms.base]
    for adapter in arms.adapters:
        same = sum(arms.answers[adapter][i.id]["output"] == base[i.id]["output"] for i in arms.items)
        share = same / len(arms.items)
        if adapter != arms.base and share >= IDENTICAL_WARNING:
            warnings.append(
                f"WARNING: {adapter} answered exactly like {arms.base} on {share:.0%} of items; "
                "the adapter is probably not applied"
            )
    for adapter, summary in judge.items():
        if summary.position_consistency < 0.5:
            first = summary.picked_first
            warnings.append(
                f"WARNING: the judge agreed with itself across answer orders on only "
                f"{summary.position_consistency:.0%} of items for {adapter}; its verdict is weak evidence"
                + ("" if first is None else f" (it named the answer shown first {first:.0%} of the time)")
            )
        if warning := length_warning(adapter, summary):
            warnings.append(warning)
    return warnings


def _latency_ratios(
    latency: dict[str, LatencySummary | None], base: str, adapters: list[str]
) -> dict[str, dict]:
    ratios = {}
    keys = ("ttft_p50_ms", "tpot_p50_ms", "e2e_p50_ms", "e2e_p99_ms", "output_throughput")
    for adapter in adapters:
        b, a = latency.get(base), latency.get(adapter)
        if a and b:
            ratios[adapter] = {
                k: round(getattr(a, k) / getattr(b, k), 3) for k in keys if getattr(a, k) and getattr(b, k)
            }
    return ratios


def _noise(
    settings: EvalSettings, arms: Arms, stats: ArmComparisons, scorers: list[Scorer], alpha: float
) -> NoiseFloor | None:
    """The A/A check of the base (None without a repeat arm); marks every comparison against its floor."""
    if not arms.repeat:
        return None
    comparisons = [_compare_one(arms, arms.base, s, alpha, None) for s in scorers]
    base, repeat = arms.answers[arms.base], arms.answers[arms.repeat]
    noise = noise_floor(arms.repeat, base, repeat, comparisons, settings.concurrency)
    mark_within_noise(stats.comparisons, noise.floor)
    return noise


def assemble(
    settings: EvalSettings,
    arms: Arms,
    stats: ArmComparisons,
    primary: Scorer,
    alpha: float,
    latency: dict[str, LatencySummary | None],
) -> ABResult:
    """The typed result of an A/B comparison (what results.json holds)."""
    return ABResult(
        base=arms.base,
        adapters=arms.adapters,
        endpoint=settings.endpoint,
        items=len(arms.items),
        alpha=alpha,
        margin=settings.margin,
        sampling=settings.sampling.key(),
        warnings=_warnings(arms, stats.judge),
        primary_metric=primary.name,
        comparisons=stats.comparisons,
        by_tag=stats.by_tag,
        judge=stats.judge,
        latency=latency,
        latency_ratio=_latency_ratios(latency, arms.base, arms.adapters),
    )


def ab_compare(settings: EvalSettings, base: str, adapters: list[str], alpha: float = 0.05) -> ABResult:
    """Compare each adapter with the base on the same items, prompts and sampling settings.

    Naming the base as its own adapter runs an A/A check: the base answers twice, as two
    independent arms. ``settings.noise_floor`` adds that A/A arm to any comparison and marks each
    difference within its noise floor (``clients/noise.py``). Writes the answers (one file per
    arm) and the reports under ``settings.out``.

    Raises:
        EvalError: no adapter, a name not served or of another base, or a request that failed.
    """
    if not adapters:
        raise EvalError("name at least one adapter to compare with the base")
    items = load_items(settings.data, settings.limit)  # bad data is named before the server is asked
    check_adapters(list_models(settings.endpoint, settings.api_key), base, adapters)
    if settings.judge_endpoint and settings.judge_model:
        check_judge(settings.judge_endpoint, settings.judge_model, settings.judge_api_key)
    determinism = server_determinism(settings.endpoint, settings.api_key)
    scorers = _scorers(settings, items)
    repeat = wants_repeat(settings.noise_floor, determinism)
    arms = score(run_arms(settings, items, base, adapters, repeat), scorers)
    stats = compare_arms(settings, arms, scorers, alpha)
    noise = _noise(settings, arms, stats, scorers, alpha)
    latency = {arm: _latency(settings, items, arm) for arm in arms.models}
    result = assemble(settings, arms, stats, scorers[0], alpha, latency)
    result.noise_floor, result.determinism = noise, determinism
    if noise and determinism.deterministic and noise.answers_differ:
        result.warnings.append(
            f"WARNING: the server reports deterministic inference, yet the two arms of {base} "
            f"answered {noise.answers_differ} of {noise.items} items differently"
        )
    result.report = str(write_ab_report(Path(settings.out), result, items, arms.answers, arms.scores))
    return result
