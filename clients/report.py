"""Reports: ``report.md`` (short enough for a PR comment), a self-contained ``report.html``
with plots, ``results.json`` (the typed result; JSON Schema in ``clients/schemas/``) and
``samples.jsonl`` (every answer).

Markdown and HTML are rendered from the Jinja2 templates in ``clients/templates/`` (the
web console renders the same ones): ``render_report(name, **context)``.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from pathlib import Path
from typing import Any

from tuneship.chat import text_of
from tuneship.clients.data import EvalItem
from tuneship.clients.latency import percentile
from tuneship.clients.results import ABResult, Comparison, EvalResult, LatencySummary

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
RESULTS_JSON = "results.json"
SAMPLES = "samples.jsonl"
EXAMPLES = 2


def fmt_p(p: float) -> str:
    """A p-value for a table: scientific below 0.001."""
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def one_line(text: str, limit: int = 160) -> str:
    """Text shown inline in Markdown: newlines and backticks made visible, long text cut."""
    text = text.strip().replace("\n", " ⏎ ").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@cache
def report_environment() -> Any:
    """The Jinja2 environment of the report templates (HTML and SVG autoescaped, Markdown not).

    Filters: ``fmt_p`` (p-values), ``one_line`` (inline Markdown text), ``pct`` (0.75 -> 75%).
    """
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "html.j2", "svg.j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=StrictUndefined,
    )
    env.filters.update(fmt_p=fmt_p, one_line=one_line, pct=lambda v: f"{v:.0%}")
    return env


def render_report(name: str, **context: Any) -> str:
    """Render the template ``clients/templates/NAME`` (e.g. ``ab.md.j2``) with ``context``.

    Raises:
        jinja2.TemplateNotFound: no such template.
    """
    return report_environment().get_template(name).render(**context)


def ab_table(result: ABResult) -> str:
    """The A/B table in Markdown: one row per adapter and metric, then the A/A noise floor and the
    server's determinism (as ``report.md`` shows them)."""
    tables = report_environment().get_template("tables.md.j2").module
    table, noise = str(tables.comparison_table(result)).strip(), str(tables.noise_lines(result)).strip()
    return f"{table}\n\n{noise}" if noise else table


def judge_text(result: ABResult) -> str:
    """The judge's lines in Markdown (outcome, position and length diagnostics); empty without a judge."""
    return str(report_environment().get_template("tables.md.j2").module.judge_lines(result)).strip()


def _examples(
    items: list[EvalItem],
    answers: dict[str, dict[str, dict]],
    scores: dict[str, dict[str, list[float]]],
    base: str,
    adapter: str,
    metric: str,
) -> dict[str, list[dict]]:
    """Up to EXAMPLES items where ``adapter`` scored above (improved) and below (regressed) the base."""
    out: dict[str, list[dict]] = {"improved": [], "regressed": []}
    for item, b, a in zip(items, scores[base][metric], scores[adapter][metric], strict=True):
        title = "improved" if a > b else "regressed" if a < b else None
        if title and len(out[title]) < EXAMPLES:
            out[title].append(
                {
                    "id": item.id,
                    "prompt": text_of(item.messages[-1].get("content")),
                    "reference": item.references[0],
                    "base": answers[base][item.id]["output"],
                    "adapter": answers[adapter][item.id]["output"],
                }
            )
    return out


def _samples(
    items: list[EvalItem], answers: dict[str, dict[str, dict]], scores: dict[str, dict[str, list[float]]]
) -> list[dict]:
    rows = []
    for k, item in enumerate(items):
        for arm in answers:
            rows.append(
                {
                    "id": item.id,
                    "arm": arm,
                    "tags": item.tags,
                    "prompt": item.messages,
                    "references": item.references,
                    "output": answers[arm][item.id]["output"],
                    "finish_reason": answers[arm][item.id].get("finish_reason"),
                    "scores": {m: v[k] for m, v in scores[arm].items() if len(v) == len(items)},
                }
            )
    return rows


def _write_data(
    out: Path,
    result: ABResult | EvalResult,
    items: list[EvalItem],
    answers: dict[str, dict[str, dict]],
    scores: dict[str, dict[str, list[float]]],
) -> None:
    """results.json (the typed result) and samples.jsonl (every answer with its scores)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_JSON).write_text(result.model_dump_json(indent=2) + "\n")
    rows = _samples(items, answers, scores)
    (out / SAMPLES).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _unit_scale(groups: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Scores on 0-100 scales (BLEU, chrF) shown as fractions so every bar fits one axis."""
    return {
        m: {a: v / 100 if max(vals.values()) > 1 else v for a, v in vals.items()}
        for m, vals in groups.items()
    }


def _latency_rows(latency: dict[str, LatencySummary | None]) -> list[dict]:
    """Strip-chart rows: each arm's end-to-end latency samples (s) and their median."""
    rows = [
        {"label": arm, "values": s.samples_e2e_s, "median": percentile(s.samples_e2e_s, 50)}
        for arm, s in latency.items()
        if s and s.samples_e2e_s
    ]
    return rows


def _length_rows(
    result: ABResult,
    items: list[EvalItem],
    answers: dict[str, dict[str, dict]],
    scores: dict[str, dict[str, list[float]]],
) -> list[dict]:
    """Chart rows per judged adapter and outcome: each item's length difference (adapter - base,
    characters), in the row of the judge's outcome for it."""
    rows = []
    outcomes = {1.0: ("won", "#2ca02c"), 0.5: ("tie", "#8c8c8c"), 0.0: ("lost", "#d62728")}
    for adapter in result.judge:
        judged = scores.get(adapter, {}).get("judge_win_rate")
        if judged is None or adapter not in answers:
            continue
        diffs = [
            len(answers[adapter][i.id]["output"]) - len(answers[result.base][i.id]["output"]) for i in items
        ]
        for value, (label, colour) in outcomes.items():
            values = [d for d, o in zip(diffs, judged, strict=True) if o == value]
            rows.append({"label": f"{adapter}: {label}", "values": values, "colour": colour})
    return rows


def _interval_rows(comparisons: dict[str, list[Comparison]]) -> list[dict]:
    return [
        {"label": f"{a}: {c.metric}", "diff": c.diff, "low": c.ci_low, "high": c.ci_high}
        for a, cs in comparisons.items()
        for c in cs
    ]


def write_ab_report(
    out: Path,
    result: ABResult,
    items: list[EvalItem],
    answers: dict[str, dict[str, dict]],
    scores: dict[str, dict[str, list[float]]],
) -> Path:
    """Write results.json, samples.jsonl, report.md (short) and a self-contained report.html.

    Args:
        out: the report directory (created).
        result: the comparison; ``items``: its items, in order.
        answers: arm -> item id -> answer record; ``scores``: arm -> metric -> per-item scores.

    Returns:
        The path of report.md.
    """
    _write_data(out, result, items, answers, scores)
    aa = result.noise_floor.arm if result.noise_floor else None  # the A/A arm answers for the base
    arm = {a: aa if a == result.base and aa else a for a in result.adapters}
    metric = result.primary_metric
    examples = {a: _examples(items, answers, scores, result.base, arm[a], metric) for a in result.adapters}
    markdown = render_report("ab.md.j2", result=result, examples=examples)
    (out / REPORT_MD).write_text(markdown)
    means = {m: {arm: sum(scores[arm][m]) / len(items) for arm in answers} for m in scores[result.base]}
    page = render_report(
        "ab.html.j2",
        title=f"A/B: {', '.join(result.adapters)} vs {result.base}",
        markdown=markdown,
        intervals=_interval_rows(result.comparisons),
        means=_unit_scale(means),
        latency_samples=_latency_rows(result.latency),
        length_rows=_length_rows(result, items, answers, scores),
    )
    (out / REPORT_HTML).write_text(page)
    log.info("A/B report written to %s", out / REPORT_MD)
    return out / REPORT_MD


def write_eval_report(
    out: Path,
    result: EvalResult,
    items: list[EvalItem],
    answers: dict[str, dict],
    scores: dict[str, list[float]],
) -> Path:
    """Write results.json, samples.jsonl, report.md and report.html of one model's evaluation.

    Returns:
        The path of report.md.
    """
    _write_data(out, result, items, {result.model: answers}, {result.model: scores})
    markdown = render_report("eval.md.j2", result=result)
    (out / REPORT_MD).write_text(markdown)
    page = render_report(
        "eval.html.j2",
        title=f"Evaluation: {result.model}",
        markdown=markdown,
        means=_unit_scale({m: {result.model: v} for m, v in result.scores.items()}),
        latency_samples=_latency_rows({result.model: result.latency}),
    )
    (out / REPORT_HTML).write_text(page)
    log.info("evaluation report written to %s", out / REPORT_MD)
    return out / REPORT_MD
