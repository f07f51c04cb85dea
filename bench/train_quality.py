"""Time to a good adapter: the seed guide's recipe against `tuneship train`, speed, memory and score.

    .venv/bin/python bench/train_quality.py [--task tickets --task invoices] [--rows 120]
        [--eval-rows 40] [--arms recipe tuneship lora-bf16 qlora] [--out DIR] [--work-dir DIR]

Per task (examples/TASK/train.jsonl and eval.jsonl, chat rows; --rows/--eval-rows take the first
N of each), every arm trains on the same rows in its own process, one after another:

  recipe     the guide's recipe as a tutorial writes it (bench/recipe_sft.py): plain TRL
             SFTTrainer + PEFT + bitsandbytes, QLoRA NF4, r=16, alpha 32, dropout 0.05, lr 2e-4
             constant, batch 4, one epoch, bf16 autocast, on plain ``text`` rows (the chat
             rendered with the base's template; the loss falls on every token).
  tuneship   ``tuneship train`` with its defaults: only --data/--name/--runs-dir/--eval-data, plus
             --save-steps so that the run leaves intermediate checkpoints to score (a save
             changes no training step; it costs its own seconds, counted in the wall time).
  lora-bf16  the same with --method lora --precision bf16 (the memory comparison's reference).
  qlora      the same with --method qlora.

Measured per arm: trained tokens (the trainer's count of input tokens), training seconds, tokens/s,
MFU = 6 x N x tokens/s against the bf16 matmul peak measured in this run (N: every parameter of
the base model, the path each token takes forward and back; LoRA skips the frozen weights'
gradients, so the true FLOPs are nearer 4N and this MFU is an upper bound), the process's wall
time from start to exit (loading included) and its peak RSS (``ru_maxrss`` of that child alone,
from ``os.wait4``). Ratios are against the recipe arm.

Then one vLLM server (``tuneship serve``'s VLLMServer) serves every arm's adapter of every task,
and the tuneship arm's checkpoints, as LoRA adapters; ``tuneship ab`` scores each task's
adapters against the base on the held-out rows, greedy (primary metric: the first scorer,
json_equal for JSON answers; 95% Wilson interval of each arm's mean, and ab's paired interval of
its difference to the base). For the tuneship arm the report names the first checkpoint whose
score reaches the recipe's final score, with its wall time (the checkpoint's adapter file time
since the process started) against the recipe's.

Writes DIR/report.md and DIR/results.json (every number measured in this run), and ab's own
reports under WORK/ab-TASK/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))
from measure import matmul_peak  # noqa: E402
from train_quality_report import ArmRun, Checkpoint, fmt, report  # noqa: E402

VENV_BIN = Path(sys.executable).parent
ARMS = {
    "recipe": [],
    "tuneship": [],
    "lora-bf16": ["--method", "lora", "--precision", "bf16"],
    "qlora": ["--method", "qlora"],
}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "chat_template.jinja")
DEFAULT_BATCH = 8  # TrainConfig.batch_size, for spacing the checkpoints


def wilson(mean: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``mean`` over ``n`` items (scipy's binomtest)."""
    from scipy.stats import binomtest

    if n <= 0:
        return (0.0, 1.0)
    interval = binomtest(round(mean * n), n).proportion_ci(0.95, method="wilson")
    return (float(interval.low), float(interval.high))


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare_task(task: str, rows: int | None, eval_rows: int | None, base: Path, work: Path) -> dict:
    """The task's first N train / eval rows as chat files, and the train rows as ``text`` rows."""
    from transformers import AutoTokenizer

    source = REPO / "examples" / task
    if not (source / "train.jsonl").is_file():
        raise SystemExit(f"{source}/train.jsonl not found (generate it with examples/make_{task}.py)")
    out = work / task
    out.mkdir(parents=True, exist_ok=True)
    train = (source / "train.jsonl").read_text().splitlines()[:rows]
    held_out = (source / "eval.jsonl").read_text().splitlines()[:eval_rows]
    (out / "train.jsonl").write_text("\n".join(train) + "\n")
    (out / "eval.jsonl").write_text("\n".join(held_out) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(base)
    with (out / "text.jsonl").open("w") as f:
        for line in train:
            text = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False)
            f.write(json.dumps({"text": text}) + "\n")
    return {
        "train": out / "train.jsonl",
        "eval": out / "eval.jsonl",
        "text": out / "text.jsonl",
        "rows": len(train),
    }


def run_child(cmd: list[str], log: Path, watch: Path | None, keep: Path) -> tuple[int, float, float, list]:
    """Run ``cmd``; returns (exit code, wall s, peak RSS MiB, checkpoints copied from ``watch``).

    Checkpoints are copied out as they appear, since the trainer keeps only the last two.
    """
    copied: dict[int, Checkpoint] = {}
    started_epoch, started = time.time(), time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if watch is not None:
                copy_checkpoints(watch, keep, copied, started_epoch)
            if pid:
                break
            time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    wall = time.perf_counter() - started
    return proc.returncode, wall, usage.ru_maxrss / 1024, sorted(copied.values(), key=lambda c: c.step)


def copy_checkpoints(watch: Path, keep: Path, copied: dict[int, Checkpoint], started_epoch: float) -> None:
    for ckpt in watch.glob("checkpoint-*"):
        step = int(ckpt.name.rsplit("-", 1)[1])
        weights = ckpt / "adapter_model.safetensors"
        if step in copied or not (ckpt / "trainer_state.json").is_file():
            continue
        try:
            target = keep / f"step-{step}"
            target.mkdir(parents=True, exist_ok=True)
            for name in ADAPTER_FILES:
                if (ckpt / name).is_file():
                    shutil.copy2(ckpt / name, target / name)
            copied[step] = Checkpoint(step, weights.stat().st_mtime - started_epoch, str(target))
        except FileNotFoundError:  # rotated away while copying: the next one will do
            continue


def train_arm(task: str, arm: str, files: dict, base: Path, work: Path, save_steps: int) -> ArmRun:
    arm_dir = work / task / arm
    shutil.rmtree(arm_dir, ignore_errors=True)
    arm_dir.mkdir(parents=True)
    log = arm_dir / "train.log"
    if arm == "recipe":
        cmd = [str(VENV_BIN / "python"), str(BENCH / "recipe_sft.py"), "--base", str(base)]
        cmd += ["--data", str(files["text"]), "--out", str(arm_dir)]
        code, wall, rss, _ = run_child(cmd, log, None, arm_dir)
        run = ArmRun(task, arm, code, wall, rss, adapter=str(arm_dir / "adapter"), log=str(log))
        result = arm_dir / "result.json"
        if result.is_file():
            r = json.loads(result.read_text())
            run.tokens, run.train_s, run.steps = r["num_tokens"], r["train_seconds"], r["steps"]
        return run
    cmd = [str(VENV_BIN / "tuneship"), "train", "--data", str(files["train"]), "--name", arm]
    cmd += ["--runs-dir", str(arm_dir / "runs"), "--eval-data", str(files["eval"]), *ARMS[arm]]
    if "--max-steps" not in ARMS[arm]:  # a short memory arm needs no checkpoints
        cmd += ["--save-steps", str(save_steps)]
    run_dir = arm_dir / "runs" / arm
    watch = run_dir / "checkpoints"
    code, wall, rss, ckpts = run_child(cmd, log, watch, arm_dir / "ckpt")
    run = ArmRun(
        task, arm, code, wall, rss, adapter=str(run_dir / "adapter"), log=str(log), checkpoints=ckpts
    )
    if (run_dir / "run.yaml").is_file():
        import yaml

        summary = yaml.safe_load((run_dir / "run.yaml").read_text())["result"]
        run.tokens, run.train_s, run.steps = summary["num_tokens"], summary["train_seconds"], summary["steps"]
    return run


def custom_arm(spec: str) -> str:
    """Register ``NAME=FLAGS`` as an arm of ``tuneship train`` with those flags; returns NAME."""
    name, sep, flags = spec.partition("=")
    if not sep or not name or name == "recipe":
        raise SystemExit(f"--arm {spec!r}: expected NAME=FLAGS (NAME not recipe)")
    ARMS[name] = shlex.split(flags)
    return name


def served_name(run: ArmRun, ckpt: Checkpoint | None = None) -> str:
    return f"{run.task}-{run.arm}" + (f"-step{ckpt.step}" if ckpt else "")


def score_all(runs: list[ArmRun], files: dict[str, dict], base: Path, work: Path, args) -> dict:
    """Serve every adapter from one server; ``tuneship ab`` per task. Fills in the runs' scores."""
    from tuneship.serve.config import ServeConfig
    from tuneship.serve.server import VLLMServer

    adapters: dict[str, str] = {}
    for run in runs:
        if run.returncode == 0:
            adapters[served_name(run)] = run.adapter
            run.checkpoints = [c for c in run.checkpoints if c.step != run.steps]  # the final adapter
            adapters |= {served_name(run, c): c.path for c in run.checkpoints}
    config = ServeConfig(
        base=str(base),
        served_name="base",
        adapters=adapters,
        port=args.port,
        kv_cache_gb=2,
        max_model_len=1024,
        log_file=str(work / "vllm.log"),
    )
    say(f"serving the base and {len(adapters)} adapters (log: {config.log_file})")
    results = {}
    with VLLMServer(config) as server:
        say(f"server ready at {server.url}")
        for task, task_files in files.items():
            names = [n for n in adapters if n.startswith(f"{task}-")]
            if not names:
                continue
            out = work / f"ab-{task}"
            cmd = [str(VENV_BIN / "tuneship"), "ab", "--endpoint", server.url, "--base", "base"]
            cmd += [a for n in names for a in ("--adapter", n)]
            cmd += ["--data", str(task_files["eval"]), "--out", str(out), "--latency-requests", "0"]
            cmd += ["--max-tokens", str(args.max_tokens), "--noise-floor", "off"]
            say(f"{task}: tuneship ab on {task_files['eval_rows']} rows, {len(names)} adapters")
            started = time.perf_counter()
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if done.returncode != 0:
                say(f"{task}: tuneship ab failed ({done.returncode}): {done.stderr[-2000:]}")
                continue
            say(f"{task}: scored in {time.perf_counter() - started:.0f} s")
            results[task] = json.loads((out / "results.json").read_text())
    for run in runs:
        result = results.get(run.task)
        if not result:
            continue
        primary = result["primary_metric"]

        def mean(name: str, result: dict = result, primary: str = primary) -> dict | None:
            return next((c for c in result["comparisons"].get(name, []) if c["metric"] == primary), None)

        c = mean(served_name(run))
        if c:
            run.score, run.score_ci = c["adapter_mean"], wilson(c["adapter_mean"], c["n"])
            run.diff_to_base = (c["diff"], c["ci_low"], c["ci_high"])
            run.metrics = {m["metric"]: m["adapter_mean"] for m in result["comparisons"][served_name(run)]}
        for ckpt in run.checkpoints:
            got = mean(served_name(run, ckpt))
            ckpt.score = got["adapter_mean"] if got else None
    return {
        task: {
            "primary_metric": r["primary_metric"],
            "items": r["items"],
            "base": {m["metric"]: m["base_mean"] for m in next(iter(r["comparisons"].values()))},
        }
        for task, r in results.items()
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--task", action="append", help="examples/TASK data (repeatable; default: tickets)")
    parser.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="an extra `tuneship train` arm with these flags, e.g. 'lr1e-3=--lr 1e-3 --epochs 3' "
        "(repeatable; runs after --arms)",
    )
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="arms to run")
    parser.add_argument(
        "--no-score", action="store_true", help="train and measure only (no server, no scores)"
    )
    parser.add_argument("--rows", type=int, help="use the first N training rows (default: all)")
    parser.add_argument("--eval-rows", type=int, help="score on the first N held-out rows (default: all)")
    parser.add_argument(
        "--checkpoints", type=int, default=2, help="`tuneship train` arms: checkpoints per epoch"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length limit when scoring")
    parser.add_argument("--port", type=int, default=8041, help="port of the scoring server")
    parser.add_argument("--work-dir", type=Path, help="runs, adapters, logs (default: a temporary dir)")
    parser.add_argument(
        "--out", type=Path, default=Path("reports/train_quality"), help="report.md, results.json"
    )
    args = parser.parse_args()
    tasks = args.task or ["tickets"]
    arms = args.arms + [custom_arm(spec) for spec in args.arm]

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tuneship.models import resolve_base

    base = resolve_base("default")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base.path))
    params = sum(p.numel() for p in model.parameters())
    peak = matmul_peak("bfloat16")
    say(f"bf16 matmul peak {peak / 1e9:.0f} GFLOP/s; base {base.name}, {params / 1e6:.1f}M parameters")
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work_dir or Path(tmp)).resolve()
        files, runs = {}, []
        for task in tasks:
            files[task] = prepare_task(task, args.rows, args.eval_rows, base.path, work)
            files[task]["eval_rows"] = len((work / task / "eval.jsonl").read_text().splitlines())
            save_steps = max(1, math.ceil(files[task]["rows"] / DEFAULT_BATCH) // args.checkpoints)
            for arm in arms:
                say(f"{task}: training arm {arm} on {files[task]['rows']} rows")
                load = os.getloadavg()[0]
                run = train_arm(task, arm, files[task], base.path, work, save_steps)
                run.load = (load, os.getloadavg()[0])
                runs.append(run)
                say(
                    f"{task}/{arm}: exit {run.returncode}, {fmt(run.tokens, '.0f')} tokens in "
                    f"{fmt(run.train_s)} s ({fmt(run.tokens_per_s)} tokens/s), wall {run.wall_s:.0f} s, "
                    f"peak RSS {run.peak_rss_mb:.0f} MiB, {len(run.checkpoints)} checkpoints (log: {run.log})"
                )
        scores = {} if args.no_score else score_all(runs, files, base.path, work, args)
        meta = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "threads": torch.get_num_threads(),
            "peak_bf16": peak,
            "base": base.name,
            "params": params,
            "tasks": tasks,
            "rows": {t: f["rows"] for t, f in files.items()},
        }
        args.out.mkdir(parents=True, exist_ok=True)
        text = report(runs, scores, meta)
        (args.out / "report.md").write_text(text + "\n")
        dump = {
            "meta": meta,
            "scores": scores,
            "runs": [asdict(r) | {"tokens_per_s": r.tokens_per_s} for r in runs],
        }
        (args.out / "results.json").write_text(json.dumps(dump, indent=1))
        print("\n" + text)
        say(f"wrote {args.out / 'report.md'} and {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
