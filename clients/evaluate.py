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
from tuneship.clients.report import write_ab_report, write_eval_report
from tuneship.clients.runner import Sampling, generate, list_models
from tuneship.clients.scorers import SCORERS, default_scorers
from tuneship.clients.stats import Comparison, compare, holm
from tuneship.errors import EvalError

# When an adapter answers byte-for-byte like the base on at least this share of
# items, it is most likely not applied at all (wrong name, served without LoRA).
IDENTICAL_WARNING = 0.9


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
    sampling: Sampling = field(default_factory=Sampling)


def _scorer_names(settings: EvalSettings, items: list[EvalItem]) -> list[str]:
    names = settings.scorers or default_scorers([r for item in items for r in item.references])
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        raise EvalError(f"unknown scorer(s) {', '.join(unknown)}; choose from {', '.join(SCORERS)}")
    return names


def _score(items: list[EvalItem], answers: dict[str, dict], names: list[str]) -> dict[str, list[float]]:
    return {n: [SCORERS[n](answers[item.id]["output"], item.references) for item in items] for n in names}


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
        progress=progress,
    )


def _progress(total: int, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="item")


def evaluate(settings: EvalSettings, model: str) -> dict:
    """Score one model on the data; writes answers and report.md/report.json under ``out``."""
    models = list_models(settings.endpoint, settings.api_key)
    if model not in models:
        raise EvalError(f"model {model!r} is not served at {settings.endpoint} (served: {', '.join(models)})")
    items = load_items(settings.data, settings.limit)
    names = _scorer_names(settings, items)
    with _progress(len(items), model) as bar:
        answers = _run_arm(settings, items, model, bar.update)
    scores = _score(items, answers, names)
    summary = {"model": model, "items": len(items), "scores": {n: sum(v) / len(v) for n, v in scores.items()}}
    summary["report"] = str(write_eval_report(Path(settings.out), summary, items, answers, scores))
    return summary


def check_adapters(models: dict[str, dict], base: str, adapters: list[str]) -> None:
    missing = [m for m in [base, *adapters] if m not in models]
    if missing:
        raise EvalError(f"not served: {', '.join(missing)} (served: {', '.join(models)})")
    for name in adapters:
        parent = models[name].get("parent")
        if parent is not None and parent != base:
            raise EvalError(f"adapter {name!r} belongs to {parent!r}, not to the base {base!r}")


def ab_compare(settings: EvalSettings, base: str, adapters: list[str], alpha: float = 0.05) -> dict:
    """Compare each adapter with the base on the same items, prompts and sampling settings."""
    if not adapters:
        raise EvalError("name at least one adapter to compare with the base")
    check_adapters(list_models(settings.endpoint, settings.api_key), base, adapters)
    items = load_items(settings.data, settings.limit)
    names = _scorer_names(settings, items)
    answers = {}
    for model in [base, *adapters]:
        with _progress(len(items), model) as bar:
            answers[model] = _run_arm(settings, items, model, bar.update)
    scores = {m: _score(items, answers[m], names) for m in answers}
    comparisons: dict[str, list[Comparison]] = {}
    for adapter in adapters:
        comparisons[adapter] = [
            compare(
                n, SCORERS[n].kind, scores[base][n], scores[adapter][n], alpha, SCORERS[n].higher_is_better
            )
            for n in names
        ]
    _adjust_for_multiple_comparisons(comparisons, alpha)
    warnings = []
    for adapter in adapters:
        same = sum(answers[adapter][i.id]["output"] == answers[base][i.id]["output"] for i in items) / len(
            items
        )
        if same >= IDENTICAL_WARNING:
            warnings.append(
                f"WARNING: {adapter} answered exactly like {base} on {same:.0%} of items; "
                "the adapter is probably not applied"
            )
    result = {
        "base": base,
        "adapters": adapters,
        "items": len(items),
        "alpha": alpha,
        "warnings": warnings,
        "comparisons": {a: [c.as_dict() for c in cs] for a, cs in comparisons.items()},
        "primary_metric": names[0],
    }
    result["report"] = str(write_ab_report(Path(settings.out), result, items, answers, scores))
    return result


def _adjust_for_multiple_comparisons(comparisons: dict[str, list[Comparison]], alpha: float) -> None:
    """Holm-adjust p-values across adapters per metric when more than one adapter is compared."""
    if len(comparisons) < 2:
        return
    metrics = {c.metric for cs in comparisons.values() for c in cs}
    for metric in metrics:
        cells = [c for cs in comparisons.values() for c in cs if c.metric == metric]
        for c, p in zip(cells, holm([c.p_value for c in cells]), strict=True):
            c.p_value = p
            if p >= alpha:
                c.verdict = "inconclusive"
