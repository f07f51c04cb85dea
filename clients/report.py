"""Readable reports: Markdown (with an SVG chart) plus JSON for machines."""

from __future__ import annotations

from pathlib import Path

from tuneship.artifacts import write_json
from tuneship.clients.data import EvalItem
from tuneship.clients.latency import percentile

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
CHART = "scores.svg"
EXAMPLES = 3


def fmt_p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def ab_table(result: dict) -> str:
    """The A/B table: one row per adapter and metric."""
    lines = [
        "| adapter | metric | base | adapter | diff [95% CI] | p-value | improved / regressed | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for adapter, comparisons in result["comparisons"].items():
        for c in comparisons:
            lines.append(
                f"| {adapter} | {c['metric']} | {c['base_mean']:.3f} | {c['adapter_mean']:.3f} | "
                f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {fmt_p(c['p_value'])} | "
                f"{c['improved']} / {c['regressed']} | **{c['verdict']}** |"
            )
    return "\n".join(lines)


def bar_chart_svg(groups: dict[str, dict[str, float]], width: int = 560) -> str:
    """A grouped bar chart (metric -> {arm: score in [0, 1]}) as standalone SVG."""
    colours = ["#8c8c8c", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    arms = list(next(iter(groups.values())))
    bar, gap, height = 22, 18, 200
    group_w = bar * len(arms) + gap
    width = max(width, 60 + group_w * len(groups))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 70}" '
        'font-family="sans-serif" font-size="11">',
        f'<line x1="40" y1="{height}" x2="{width - 10}" y2="{height}" stroke="black"/>',
    ]
    for g, (metric, values) in enumerate(groups.items()):
        x0 = 50 + g * group_w
        for a, arm in enumerate(arms):
            h = max(0.0, min(1.0, values[arm])) * (height - 20)
            x = x0 + a * bar
            out.append(
                f'<rect x="{x}" y="{height - h:.1f}" width="{bar - 2}" height="{h:.1f}" '
                f'fill="{colours[a % len(colours)]}"><title>{arm}: {values[arm]:.3f}</title></rect>'
            )
            out.append(
                f'<text x="{x + bar / 2 - 1}" y="{height - h - 3:.1f}" text-anchor="middle">'
                f"{values[arm]:.2f}</text>"
            )
        out.append(
            f'<text x="{x0 + (group_w - gap) / 2}" y="{height + 15}" text-anchor="middle">{metric}</text>'
        )
    for a, arm in enumerate(arms):
        y = height + 35 + 14 * (a // 3)
        x = 50 + 170 * (a % 3)
        out.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colours[a % len(colours)]}"/>'
            f'<text x="{x + 14}" y="{y}">{arm}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def one_line(text: str, limit: int = 160) -> str:
    """Text shown inline in Markdown: newlines and backticks made visible, long text cut."""
    text = text.strip().replace("\n", " ⏎ ").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _examples(
    items: list[EvalItem],
    answers: dict[str, dict],
    base: str,
    adapter: str,
    base_scores: list[float],
    adapter_scores: list[float],
    better: bool,
) -> list[str]:
    lines = []
    for item, b, a in zip(items, base_scores, adapter_scores, strict=True):
        if (a > b) if better else (a < b):
            prompt = one_line(item.messages[-1]["content"])
            lines += [
                f"- **{item.id}**: {prompt}",
                f"  - reference: `{one_line(item.references[0])}`",
                f"  - {base}: `{one_line(answers[base][item.id]['output'])}`",
                f"  - {adapter}: `{one_line(answers[adapter][item.id]['output'])}`",
            ]
            if len(lines) >= 4 * EXAMPLES:
                break
    return lines or ["- (none)"]


def latency_lines(answers: dict[str, dict[str, dict]]) -> list[str]:
    """Median end-to-end latency per arm (non-streamed requests, so no TTFT here)."""
    lines = ["| model | p50 latency (s) | p90 latency (s) |", "|---|---|---|"]
    for model, by_id in answers.items():
        values = [r["latency_s"] for r in by_id.values()]
        lines.append(f"| {model} | {percentile(values, 50):.3f} | {percentile(values, 90):.3f} |")
    return lines


def write_ab_report(
    out: Path,
    result: dict,
    items: list[EvalItem],
    answers: dict[str, dict[str, dict]],
    scores: dict[str, dict[str, list[float]]],
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    base, adapters = result["base"], result["adapters"]
    groups = {m: {arm: sum(scores[arm][m]) / len(items) for arm in [base, *adapters]} for m in scores[base]}
    (out / CHART).write_text(bar_chart_svg(groups))
    md = [
        f"# A/B report: {', '.join(adapters)} vs {base}",
        "",
        f"{len(items)} paired items, same prompts and greedy sampling for every arm; "
        f"significance level {result['alpha']}. Binary metrics: exact McNemar test; continuous metrics: "
        "paired permutation test; intervals: paired bootstrap (95%)."
        + (" p-values Holm-adjusted across adapters." if len(adapters) > 1 else ""),
        "",
    ]
    md += [f"> {w}" for w in result["warnings"]] + ([""] if result["warnings"] else [])
    md += [ab_table(result), "", f"![scores]({CHART})", "", "## Latency", "", *latency_lines(answers), ""]
    primary = result["primary_metric"]
    for adapter in adapters:
        for title, better in (("improved", True), ("regressed", False)):
            md += [f"## {adapter}: examples {title} on {primary}", ""]
            md += _examples(
                items, answers, base, adapter, scores[base][primary], scores[adapter][primary], better
            )
            md.append("")
    path = out / REPORT_MD
    path.write_text("\n".join(md))
    write_json(out / REPORT_JSON, {k: v for k, v in result.items() if k != "report"})
    return path


def write_eval_report(
    out: Path, summary: dict, items: list[EvalItem], answers: dict[str, dict], scores: dict[str, list[float]]
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model = summary["model"]
    (out / CHART).write_text(bar_chart_svg({m: {model: v} for m, v in summary["scores"].items()}))
    md = [f"# Evaluation: {model}", "", f"{len(items)} items.", "", "| metric | score |", "|---|---|"]
    md += [f"| {m} | {v:.3f} |" for m, v in summary["scores"].items()]
    md += ["", f"![scores]({CHART})", "", "## Latency", "", *latency_lines({model: answers}), ""]
    path = out / REPORT_MD
    path.write_text("\n".join(md))
    write_json(out / REPORT_JSON, {k: v for k, v in summary.items() if k != "report"})
    return path
