"""Reports: ``report.md`` (short enough for a PR comment), a self-contained ``report.html``
with plots, ``results.json`` (versioned schema) and ``samples.jsonl`` (every answer)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from tuneship.artifacts import write_json
from tuneship.clients.data import EvalItem
from tuneship.clients.latency import percentile

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
RESULTS_JSON = "results.json"
SAMPLES = "samples.jsonl"
EXAMPLES = 2


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


LATENCY_COLUMNS = (
    ("TTFT p50", "ttft_p50_ms"),
    ("TTFT p99", "ttft_p99_ms"),
    ("TPOT p50", "tpot_p50_ms"),
    ("ITL p50", "itl_p50_ms"),
    ("E2E p50", "e2e_p50_ms"),
    ("E2E p90", "e2e_p90_ms"),
    ("E2E p99", "e2e_p99_ms"),
)


def latency_lines(latency: dict[str, dict | None], ratios: dict[str, dict] | None = None) -> list[str]:
    """Streamed latency per arm (ms) and output throughput, with adapter/base ratios."""
    measured = {arm: s for arm, s in latency.items() if s}
    if not measured:
        return ["(latency not measured)"]
    header = "| arm | requests | " + " | ".join(name for name, _ in LATENCY_COLUMNS) + " | output tok/s |"
    lines = [header, "|---" * (len(LATENCY_COLUMNS) + 3) + "|"]
    for arm, s in measured.items():
        cells = " | ".join("-" if s.get(key) is None else f"{s[key]:.0f}" for _, key in LATENCY_COLUMNS)
        lines.append(f"| {arm} | {s['requests']} | {cells} | {s['output_throughput']:.1f} |")
    for adapter, r in (ratios or {}).items():
        parts = ", ".join(f"{k.removesuffix('_ms')} {v:.2f}x" for k, v in r.items())
        lines.append(f"\n{adapter} / base: {parts}")
    lines.append(
        "\nStreamed requests at the run's concurrency, fresh (never the recorded answers). TTFT, TPOT, "
        "ITL and E2E as vLLM's serving benchmark defines them (milliseconds)."
    )
    return lines


def forest_svg(rows: list[tuple[str, float, float, float]], width: int = 560) -> str:
    """Differences with their intervals (label, diff, low, high) around a zero line, as SVG."""
    span = max([abs(v) for _, d, lo, hi in rows for v in (d, lo, hi)] + [1e-9]) * 1.1
    left, right, row_h = 220, width - 20, 22
    height = row_h * len(rows) + 30

    def x(v: float) -> float:
        return left + (v + span) / (2 * span) * (right - left)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<line x1="{x(0):.1f}" y1="5" x2="{x(0):.1f}" y2="{height - 20}" '
        'stroke="#999" stroke-dasharray="3"/>',
    ]
    for k, (label, d, lo, hi) in enumerate(rows):
        y = 15 + k * row_h
        colour = "#2ca02c" if lo > 0 else "#d62728" if hi < 0 else "#555"
        out += [
            f'<text x="5" y="{y + 4}">{_esc(label)}</text>',
            f'<line x1="{x(lo):.1f}" y1="{y}" x2="{x(hi):.1f}" y2="{y}" stroke="{colour}" stroke-width="2"/>',
            f'<circle cx="{x(d):.1f}" cy="{y}" r="4" fill="{colour}"><title>{d:+.3f} '
            f"[{lo:+.3f}, {hi:+.3f}]</title></circle>",
        ]
    out.append(f'<text x="{x(0):.1f}" y="{height - 5}" text-anchor="middle">0 (adapter - base)</text>')
    out.append("</svg>")
    return "\n".join(out)


def strip_svg(samples: dict[str, list[float]], unit: str = "s", width: int = 560) -> str:
    """Each arm's latency samples as dots with the median marked (a strip plot), as SVG."""
    top = max([v for vs in samples.values() for v in vs] + [1e-9]) * 1.05
    left, right, row_h = 120, width - 20, 30
    height = row_h * len(samples) + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">'
    ]
    for k, (arm, values) in enumerate(samples.items()):
        y = 15 + k * row_h
        out.append(f'<text x="5" y="{y + 4}">{_esc(arm)}</text>')
        for v in values:
            out.append(
                f'<circle cx="{left + v / top * (right - left):.1f}" cy="{y}" r="3" fill="#1f77b4" '
                'fill-opacity="0.5"/>'
            )
        if values:
            median = percentile(values, 50) or 0.0
            mx = left + median / top * (right - left)
            out.append(
                f'<line x1="{mx:.1f}" y1="{y - 8}" x2="{mx:.1f}" y2="{y + 8}" '
                'stroke="black" stroke-width="2"/>'
            )
    out.append(f'<text x="{left}" y="{height - 5}">0</text>')
    out.append(f'<text x="{right}" y="{height - 5}" text-anchor="end">{top:.2f} {unit}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


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


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def tag_lines(by_tag: dict[str, dict[str, dict]]) -> list[str]:
    if not any(by_tag.values()):
        return []
    lines = ["| adapter | tag | n | base | adapter | diff [95% CI] | p (Holm) | verdict |", "|---" * 8 + "|"]
    for adapter, per_tag in by_tag.items():
        for tag, c in per_tag.items():
            lines.append(
                f"| {adapter} | {tag} | {c['n']} | {c['base_mean']:.3f} | {c['adapter_mean']:.3f} | "
                f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {fmt_p(c['p_value'])} | "
                f"{c['verdict']} |"
            )
    return lines


def write_ab_report(
    out: Path,
    result: dict,
    items: list[EvalItem],
    answers: dict[str, dict[str, dict]],
    scores: dict[str, dict[str, list[float]]],
) -> Path:
    """results.json, samples.jsonl, report.md (short) and a self-contained report.html."""
    out.mkdir(parents=True, exist_ok=True)
    base, adapters = result["base"], result["adapters"]
    primary = result["primary_metric"]
    method = (
        f"{len(items)} paired items, same prompts and sampling for every arm; significance level "
        f"{result['alpha']}. Binary metrics: exact McNemar test; continuous: paired permutation test; "
        "judge: sign test; intervals: paired bootstrap (95%)."
        + (" p-values Holm-adjusted across adapters (and across tags)." if len(adapters) > 1 else "")
        + (f" Non-inferiority margin {result['margin']}." if result.get("margin") is not None else "")
    )
    md = [f"# A/B: {', '.join(adapters)} vs {base}", "", method, ""]
    md += [f"> {w}" for w in result["warnings"]] + ([""] if result["warnings"] else [])
    md += [ab_table(result), ""]
    if result.get("judge"):
        for adapter, j in result["judge"].items():
            md.append(
                f"Judge {j['judge_model']} on {adapter}: {j['wins']} wins / {j['ties']} ties / {j['losses']} "
                f"losses; position consistency {j['position_consistency']:.0%}."
            )
        md.append("")
    tags = tag_lines(result.get("by_tag", {}))
    if tags:
        md += [f"## By tag ({primary})", "", *tags, ""]
    md += ["## Latency", "", *latency_lines(result.get("latency", {}), result.get("latency_ratio")), ""]
    for adapter in adapters:
        for title, better in (("improved", True), ("regressed", False)):
            md += [f"### {adapter}: {title} on {primary}", ""]
            md += _examples(
                items, answers, base, adapter, scores[base][primary], scores[adapter][primary], better
            )
            md.append("")
    md += [
        "Full report with plots: `report.html`; every answer: `samples.jsonl`; numbers: `results.json`.",
        "",
    ]
    path = out / REPORT_MD
    path.write_text("\n".join(md))
    write_json(out / RESULTS_JSON, {k: v for k, v in result.items() if k != "report"})
    _write_jsonl(out / SAMPLES, _samples(items, answers, scores))
    groups = {m: {arm: sum(scores[arm][m]) / len(items) for arm in answers} for m in scores[base]}
    forest = [
        (f"{a}: {c['metric']}", c["diff"], c["ci_low"], c["ci_high"])
        for a, cs in result["comparisons"].items()
        for c in cs
    ]
    latency_samples = {
        arm: (s or {}).get("samples_e2e_s", []) for arm, s in result.get("latency", {}).items()
    }
    sections = [
        ("Differences with 95% intervals", forest_svg(forest)),
        ("Mean scores per arm", bar_chart_svg(_unit_scale(groups))),
    ]
    if any(latency_samples.values()):
        sections.append(("End-to-end latency per request", strip_svg(latency_samples)))
    (out / REPORT_HTML).write_text(_html(f"A/B: {', '.join(adapters)} vs {base}", md, sections))
    return path


def _unit_scale(groups: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Scores on 0-100 scales (BLEU, chrF) shown as fractions so every bar fits one axis."""
    return {
        m: {a: v / 100 if max(vals.values()) > 1 else v for a, v in vals.items()}
        for m, vals in groups.items()
    }


def _html(title: str, markdown_lines: list[str], sections: list[tuple[str, str]]) -> str:
    """A self-contained page: the Markdown report as preformatted text plus inline SVG plots."""
    plots = "\n".join(f"<h2>{_esc(name)}</h2>\n{svg}" for name, svg in sections)
    body = _esc("\n".join(markdown_lines))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
pre{{white-space:pre-wrap;background:#f6f8fa;padding:1em;border-radius:6px;font-size:12px}}</style>
</head><body><h1>{_esc(title)}</h1>
{plots}
<h2>Report</h2><pre>{body}</pre>
</body></html>
"""


def write_eval_report(
    out: Path, summary: dict, items: list[EvalItem], answers: dict[str, dict], scores: dict[str, list[float]]
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model = summary["model"]
    md = [f"# Evaluation: {model}", "", f"{len(items)} items.", "", "| metric | score |", "|---|---|"]
    md += [f"| {m} | {v:.3f} |" for m, v in summary["scores"].items()]
    md += ["", "## Latency", "", *latency_lines({model: summary.get("latency")}), ""]
    path = out / REPORT_MD
    path.write_text("\n".join(md))
    write_json(out / RESULTS_JSON, {k: v for k, v in summary.items() if k != "report"})
    _write_jsonl(out / SAMPLES, _samples(items, {model: answers}, {model: scores}))
    sections = [("Scores", bar_chart_svg(_unit_scale({m: {model: v} for m, v in summary["scores"].items()})))]
    samples = (summary.get("latency") or {}).get("samples_e2e_s")
    if samples:
        sections.append(("End-to-end latency per request", strip_svg({model: samples})))
    (out / REPORT_HTML).write_text(_html(f"Evaluation: {model}", md, sections))
    return path
