"""The report of bench/train_quality.py: one Markdown table per task, checkpoints per arm."""

from __future__ import annotations

from dataclasses import dataclass, field

from measure import mfu


@dataclass
class Checkpoint:
    step: int
    wall_s: float
    path: str
    score: float | None = None


@dataclass
class ArmRun:
    task: str
    arm: str
    returncode: int
    wall_s: float
    peak_rss_mb: float
    tokens: float | None = None
    train_s: float | None = None
    steps: int | None = None
    adapter: str = ""
    log: str = ""
    checkpoints: list[Checkpoint] = field(default_factory=list)
    load: tuple[float, float] | None = None  # 1-minute load average at the arm's start and end
    score: float | None = None
    score_ci: tuple[float, float] | None = None
    diff_to_base: tuple[float, float, float] | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # every scorer's mean

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.train_s if self.tokens and self.train_s else None


def first_reaching(points: list[Checkpoint], target: float | None) -> Checkpoint | None:
    """The earliest (by wall time) scored checkpoint whose score is at least ``target``."""
    if target is None:
        return None
    reached = [p for p in points if p.score is not None and p.score >= target]
    return min(reached, key=lambda p: p.wall_s, default=None)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def report(runs: list[ArmRun], scores: dict, meta: dict) -> str:
    lines = [
        "# Time to a good adapter: the guide's recipe against `tuneship train`",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['threads']} torch threads; bf16 matmul peak measured in this run "
        f"{meta['peak_bf16'] / 1e9:.0f} GFLOP/s. Base {meta['base']} ({meta['params'] / 1e6:.1f}M "
        f"parameters). MFU = 6 x {meta['params'] / 1e6:.1f}M (all base parameters) x tokens/s / bf16 "
        "peak. Tokens: the trainer's count of input tokens. Wall: process start to exit (loading "
        "included). RSS: peak of that process alone. Load: the machine's 1-minute load average at "
        "the arm's start and end (other work shares the cores). Ratios against the recipe arm.",
        "",
    ]
    for task in meta["tasks"]:
        lines += task_lines(task, [r for r in runs if r.task == task], scores.get(task, {}), meta)
    return "\n".join(lines)


def task_lines(task: str, runs: list[ArmRun], scores: dict, meta: dict) -> list[str]:
    by_arm = {r.arm: r for r in runs}
    recipe, lora = by_arm.get("recipe"), by_arm.get("lora-bf16")
    primary = scores.get("primary_metric", "-")
    base = scores.get("base", {})
    other = next((m for m in base if m != primary), None)
    lines = [
        f"## {task}: {meta['rows'][task]} train rows, {scores.get('items', '-')} held-out rows",
        "",
        f"Primary metric: {primary}; base model {fmt(base.get(primary), '.3f')}"
        + (f", {other} {fmt(base.get(other), '.3f')}." if other else "."),
        "",
        "| arm | steps | tokens | train s | tokens/s | vs recipe | MFU | wall s | peak RSS MiB "
        f"| RSS vs lora-bf16 | load | {primary} [95% CI] | vs base [95% CI] | {other or '-'} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in by_arm.items():
        rate = r.tokens_per_s
        util = mfu(meta["params"], rate, meta["peak_bf16"]) * 100 if rate else None
        diff = f"{r.diff_to_base[0]:+.3f} [{r.diff_to_base[1]:+.3f}, {r.diff_to_base[2]:+.3f}]"
        ci = ", ".join(fmt(x, ".2f") for x in r.score_ci or (None, None))
        cells = [
            arm if r.returncode == 0 else f"{arm} (exit {r.returncode})",
            fmt(r.steps, "d"),
            fmt(r.tokens, ".0f"),
            fmt(r.train_s),
            fmt(rate),
            ratio(rate, recipe.tokens_per_s if recipe else None),
            f"{fmt(util, '.1f')}%",
            f"{r.wall_s:.0f}",
            f"{r.peak_rss_mb:.0f}",
            ratio(r.peak_rss_mb, lora.peak_rss_mb if lora else None),
            "-" if not r.load else f"{r.load[0]:.1f}-{r.load[1]:.1f}",
            f"{fmt(r.score, '.3f')} [{ci}]",
            diff if r.diff_to_base else "-",
            fmt(r.metrics.get(other or ""), ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for arm, r in by_arm.items():
        if arm != "recipe" and (r.checkpoints or arm == "tuneship"):
            lines += [*checkpoint_lines(r, recipe, base.get(primary)), ""]
    return lines


def checkpoint_lines(run: ArmRun | None, recipe: ArmRun | None, base_score: float | None) -> list[str]:
    if not run or not run.checkpoints:
        return [f"No checkpoints of arm {run.arm if run else 'tuneship'} were scored."]
    points = [*run.checkpoints, Checkpoint(run.steps or -1, run.wall_s, run.adapter, run.score)]
    lines = [f"Arm {run.arm}'s checkpoints (wall s since its process started; last row: the final adapter):"]
    lines += ["", "| step | wall s | score |", "|---|---|---|"]
    lines += [f"| {p.step} | {p.wall_s:.0f} | {fmt(p.score, '.3f')} |" for p in points]
    target = recipe.score if recipe else None
    hit = first_reaching(points, target)
    if target is None or recipe is None:
        return [*lines, "", "The recipe arm has no score: nothing to reach."]
    if hit is None:
        return [*lines, "", f"No {run.arm} checkpoint reached the recipe's final score {target:.3f}."]
    lines += [
        "",
        f"First to reach the recipe's final score {target:.3f}: step {hit.step} at {hit.wall_s:.0f} s, "
        f"{hit.wall_s / recipe.wall_s:.2f} of the recipe's wall time ({recipe.wall_s:.0f} s; aim <= 0.5).",
    ]
    if base_score is not None and target <= base_score:
        lines.append("The recipe does not beat the base model here, so reaching its score says nothing.")
    return lines
