"""Score one model, or A/B compare adapters with their base, through the OpenAI API.

    tuneship eval --endpoint URL --model NAME --data FILE
    tuneship ab   --endpoint URL --base NAME --adapter NAME --data FILE

Works against any OpenAI-compatible server: models are discovered through
``/v1/models``; an adapter whose ``parent`` is not the base is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.clients.data import EvalItem, load_items
from tuneship.clients.judge import judge_pairs, judge_summary
from tuneship.clients.latency import measure_latency
from tuneship.clients.report import write_ab_report, write_eval_report
from tuneship.clients.runner import Sampling, generate, list_models
from tuneship.clients.scorers import Scorer, default_scorers, make_scorer
from tuneship.clients.stats import Comparison, compare, holm, judge_compare
from tuneship.errors import EvalError

# When an adapter answers byte-for-byte like the base on at least this share of
# items, it is most likely not applied at all (wrong name, served without LoRA).
IDENTICAL_WARNING = 0.9
EXAMPLE_IDS = 5
SCHEMA_VERSION = 1


@dataclass
class EvalSettings:
    endpoint: str = "http://127.0.0.1:8000/v1"
    data: str = ""
    out: str = "reports/eval"
    scorers: list[str] = field(default_factory=list)
    api_key: str | None = None
    limit: int | None = None
    concurrency: int = 16
    timeout: float = 120.0
    retries: int = 5
    sampling: Sampling = field(default_factory=Sampling)
    latency_requests: int = 32  # streamed requests per arm for latency (0: skip)
    margin: float | None = None  # non-inferiority margin, in the metric's units
    judge_endpoint: str | None = None
    judge_model: str | None = None
    judge_api_key: str | None = None


def _scorers(settings: EvalSettings, items: list[EvalItem]) -> list[Scorer]:
    specs = settings.scorers or default_scorers([r for item in items for r in item.references])
    try:
        return [make_scorer(spec) for spec in specs]
    except (ValueError, OSError) as e:
        raise EvalError(f"scorer: {e}") from None


def _score(items: list[EvalItem], answers: dict[str, dict], scorers: list[Scorer]) -> dict[str, list[float]]:
    return {s.name: [s(answers[item.id]["output"], item.references) for item in items] for s in scorers}


def _run_arm(settings: EvalSettings, items: list[EvalItem], model: str, progress: Any) -> dict[str, dict]:
    out = Path(settings.out) / "answers" / f"{model}.jsonl"
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
        progress=progress,
    )


def _progress(total: int, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="item")


def _latency(settings: EvalSettings, items: list[EvalItem], model: str) -> dict | None:
    """Streamed, fresh requests (never the recorded answers) at the run's concurrency."""
    if settings.latency_requests <= 0:
        return None
    prompts = [item.messages for item in items[: settings.latency_requests]]
    s = settings
    result = measure_latency(s.endpoint, model, prompts, s.concurrency, s.sampling.max_tokens, s.api_key)
    return result.summary() | {"samples_e2e_s": [round(t.e2e, 4) for t in result.timings]}


def evaluate(settings: EvalSettings, model: str) -> dict:
    """Score one model on the data; writes answers and the reports under ``out``."""
    models = list_models(settings.endpoint, settings.api_key)
    if model not in models:
        raise EvalError(f"model {model!r} is not served at {settings.endpoint} (served: {', '.join(models)})")
    items = load_items(settings.data, settings.limit)
    scorers = _scorers(settings, items)
    with _progress(len(items), model) as bar:
        answers = _run_arm(settings, items, model, bar.update)
    scores = _score(items, answers, scorers)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "items": len(items),
        "scores": {n: sum(v) / len(v) for n, v in scores.items()},
        "latency": _latency(settings, items, model),
    }
    summary["report"] = str(write_eval_report(Path(settings.out), summary, items, answers, scores))
    return summary


def check_adapters(models: dict[str, dict], base: str, adapters: list[str]) -> None:
    missing = [m for m in [base, *adapters] if m not in models]
    if missing:
        raise EvalError(f"not served: {', '.join(missing)} (served: {', '.join(models)})")
    for name in adapters:
        parent = models[name].get("parent")
        if name != base and parent is not None and parent != base:
            raise EvalError(f"adapter {name!r} belongs to {parent!r}, not to the base {base!r}")


def _compare_one(
    scorer: Scorer,
    items: list[EvalItem],
    base: list[float],
    adapter: list[float],
    alpha: float,
    margin: float | None,
) -> Comparison:
    c = compare(scorer.name, scorer.kind, base, adapter, alpha, scorer.higher_is_better, margin)
    sign = 1 if scorer.higher_is_better else -1
    gains = [(item.id, sign * (a - b)) for item, b, a in zip(items, base, adapter, strict=True)]
    c.improved_examples = [i for i, gain in gains if gain > 0][:EXAMPLE_IDS]
    c.regressed_examples = [i for i, gain in gains if gain < 0][:EXAMPLE_IDS]
    return c


def ab_compare(settings: EvalSettings, base: str, adapters: list[str], alpha: float = 0.05) -> dict:
    """Compare each adapter with the base on the same items, prompts and sampling settings.

    Naming the base as its own adapter runs an A/A check: it must come out inconclusive.
    """
    if not adapters:
        raise EvalError("name at least one adapter to compare with the base")
    check_adapters(list_models(settings.endpoint, settings.api_key), base, adapters)
    items = load_items(settings.data, settings.limit)
    scorers = _scorers(settings, items)
    arms = list(dict.fromkeys([base, *adapters]))
    answers = {}
    for model in arms:
        with _progress(len(items), model) as bar:
            answers[model] = _run_arm(settings, items, model, bar.update)
    scores = {m: _score(items, answers[m], scorers) for m in arms}
    comparisons: dict[str, list[Comparison]] = {
        adapter: [
            _compare_one(s, items, scores[base][s.name], scores[adapter][s.name], alpha, settings.margin)
            for s in scorers
        ]
        for adapter in adapters
    }
    primary = scorers[0]
    by_tag = _by_tag(items, scores, base, adapters, primary, alpha, settings.margin)
    judge = {}
    if settings.judge_endpoint and settings.judge_model:
        for adapter in adapters:
            verdicts = judge_pairs(
                items,
                answers[base],
                answers[adapter],
                settings.judge_endpoint,
                settings.judge_model,
                settings.judge_api_key,
                settings.concurrency,
                settings.timeout,
            )
            outcomes = [verdicts.outcomes[i.id] for i in items]
            comparisons[adapter].append(judge_compare(outcomes, alpha, settings.margin))
            judge[adapter] = judge_summary(verdicts)
            scores[adapter]["judge_win_rate"] = outcomes
    _adjust_for_multiple_comparisons(comparisons, alpha)
    warnings = []
    for adapter in adapters:
        same = sum(answers[adapter][i.id]["output"] == answers[base][i.id]["output"] for i in items)
        if adapter != base and same / len(items) >= IDENTICAL_WARNING:
            warnings.append(
                f"WARNING: {adapter} answered exactly like {base} on {same / len(items):.0%} of items; "
                "the adapter is probably not applied"
            )
    for adapter, summary in judge.items():
        if summary["position_consistency"] < 0.5:
            warnings.append(
                f"WARNING: the judge agreed with itself across answer orders on only "
                f"{summary['position_consistency']:.0%} of items for {adapter}; its verdict is weak evidence"
            )
    latency = {arm: _latency(settings, items, arm) for arm in arms}
    result = {
        "schema_version": SCHEMA_VERSION,
        "base": base,
        "adapters": adapters,
        "endpoint": settings.endpoint,
        "items": len(items),
        "alpha": alpha,
        "margin": settings.margin,
        "sampling": settings.sampling.key(),
        "warnings": warnings,
        "primary_metric": primary.name,
        "comparisons": {a: [c.as_dict() for c in cs] for a, cs in comparisons.items()},
        "by_tag": by_tag,
        "judge": judge,
        "latency": latency,
        "latency_ratio": _latency_ratios(latency, base, adapters),
    }
    result["report"] = str(write_ab_report(Path(settings.out), result, items, answers, scores))
    return result


def _by_tag(
    items: list[EvalItem],
    scores: dict[str, dict[str, list[float]]],
    base: str,
    adapters: list[str],
    scorer: Scorer,
    alpha: float,
    margin: float | None,
) -> dict[str, dict[str, dict]]:
    """The primary metric per tag and adapter, Holm-adjusted across all these cells."""
    tags = sorted({t for item in items for t in item.tags})
    cells: dict[str, dict[str, Comparison]] = {}
    for adapter in adapters:
        for tag in tags:
            idx = [k for k, item in enumerate(items) if tag in item.tags]
            b = [scores[base][scorer.name][k] for k in idx]
            a = [scores[adapter][scorer.name][k] for k in idx]
            cells.setdefault(adapter, {})[tag] = compare(
                scorer.name, scorer.kind, b, a, alpha, scorer.higher_is_better, margin
            )
    flat = [c for per_tag in cells.values() for c in per_tag.values()]
    if len(flat) > 1:
        for c, p in zip(flat, holm([c.p_value for c in flat]), strict=True):
            c.adjust(p, alpha)
    return {a: {t: c.as_dict() for t, c in per_tag.items()} for a, per_tag in cells.items()}


def _latency_ratios(latency: dict[str, dict | None], base: str, adapters: list[str]) -> dict[str, dict]:
    ratios = {}
    for adapter in adapters:
        b, a = latency.get(base), latency.get(adapter)
        if not a or not b:
            continue
        keys = ("ttft_p50_ms", "tpot_p50_ms", "e2e_p50_ms", "e2e_p99_ms", "output_throughput")
        ratios[adapter] = {k: round(a[k] / b[k], 3) for k in keys if a.get(k) and b.get(k)}
    return ratios


def _adjust_for_multiple_comparisons(comparisons: dict[str, list[Comparison]], alpha: float) -> None:
    """Holm-adjust p-values across adapters per metric when more than one adapter is compared."""
    if len(comparisons) < 2:
        return
    metrics = {c.metric for cs in comparisons.values() for c in cs}
    for metric in metrics:
        cells = [c for cs in comparisons.values() for c in cs if c.metric == metric]
        for c, p in zip(cells, holm([c.p_value for c in cells]), strict=True):
            c.adjust(p, alpha)
