"""The front door's cost: vLLM directly against the same vLLM through `tuneship service`, in one run.

    .venv/bin/python bench/front_door.py --out OUT [--base default] [--concurrency 1 16] [--rounds 3]

One `tuneship service` (its managed vLLM eager, its base served as ``bench-base``) and vLLM's own
serving benchmark client (``vllm bench serve`` through ``bench/vllm_bench.py``: streamed chat,
random prompts of --input-len tokens, exactly --output-len output tokens with ignore_eos) at each
concurrency against (a) the managed vLLM directly and (b) the front door. The two arms alternate
in --rounds rounds (direct first in even rounds, front door first in odd ones) on the same prompts
(one seed per round), so both meet the same load on the machine. Figures are vLLM's definitions:
output tokens/s of an arm's rounds together, TTFT p50/p99 over all their requests. Aims: output
tokens/s ratio (front door / direct) >= 0.97, TTFT p50 added <= 5 ms. Beside them, the CPU time
the service process itself used per output token in each arm: the front door's own work, which a
busy machine takes from vLLM (near zero in the direct arm), a figure other load hardly moves.

The managed vLLM listens on 127.0.0.1 with a key the service makes at start and hands to nobody.
This benchmark, run by the same user on the same host, reads its port and key from that vLLM
process's command line and environment (psutil, /proc): no setting of the service exposes them.

Then one fine-tuning job on --train-rows ticket conversations (1 epoch) through the openai SDK on
an idle worker, its file uploaded and validated first (a job waits for its file's preflight, timed
on its own): seconds from ``create`` to ``running`` and from ``succeeded`` to the first answer
of ``fine_tuned_model`` (the job polled every --poll seconds, which bounds the error). Aims: <= 2 s.
Writes OUT/results.json, OUT/results.md, the service's logs and vLLM's JSON results (OUT/raw/).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "tuneship.entrypoints.cli"]
SERVED = "bench-base"
AIMS = {"tok_s_ratio": 0.97, "ttft_p50_added_ms": 5.0, "seconds": 2.0}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(base: Path, home: Path, port: int, log: Path) -> tuple[subprocess.Popen, str]:
    """The service subprocess and an admin key for it."""
    home.mkdir(parents=True, exist_ok=True)
    create = [*CLI, "service", "keys", "create", "--name", "bench", "--role", "admin", "--home", str(home)]
    key = subprocess.run(create, capture_output=True, text=True, check=True).stdout.strip()
    args = [
        *CLI, "service", "--home", str(home), "--base", str(base), "--served-name", SERVED,
        "--port", str(port), "--eager", "--kv-cache-gb", "2", "--max-model-len", "1024",
    ]  # fmt: skip
    with log.open("ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    return process, key


def managed_vllm(service: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    """The managed vLLM's root URL and internal key, read from its process (see the module's text)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert service.poll() is None, "the service exited; see its log"
        for child in psutil.Process(service.pid).children(recursive=True):
            try:
                cmdline, environ = child.cmdline(), child.environ()
            except psutil.Error:
                continue
            if "--port" in cmdline and "VLLM_API_KEY" in environ:
                port = cmdline[cmdline.index("--port") + 1]
                return f"http://127.0.0.1:{port}", environ["VLLM_API_KEY"]
        time.sleep(0.5)
    raise SystemExit(f"no managed vLLM process under the service after {timeout:.0f}s")


def wait_ready(url: str, timeout: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url} was not ready after {timeout:.0f}s")


def bench_serve(url: str, key: str, tokenizer: Path, c: int, args, seed: int, out: Path) -> dict:
    """One run of vLLM's serving benchmark client; its saved JSON result (with per-request data)."""
    command = [
        sys.executable, str(REPO / "bench" / "vllm_bench.py"), "bench", "serve",
        "--backend", "openai-chat", "--base-url", url, "--endpoint", "/v1/chat/completions",
        "--model", SERVED, "--tokenizer", str(tokenizer), "--dataset-name", "random",
        "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
        "--ignore-eos", "--num-prompts", str(max(args.min_prompts, 2 * c)), "--max-concurrency", str(c),
        "--num-warmups", str(c), "--seed", str(seed), "--ready-check-timeout-sec", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99", "--disable-tqdm",
        "--save-result", "--save-detailed", "--result-dir", str(out.parent), "--result-filename", out.name,
    ]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": key, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(
            f"vllm bench serve failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    result = json.loads(out.read_text())
    if result["failed"]:
        raise SystemExit(f"{result['failed']} requests failed: {result['errors'][:3]}")
    return result


def cpu_seconds(pid: int) -> float:
    """CPU time the service process itself has used (the front door; not its vLLM or training)."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def summarize(runs: list[dict]) -> dict:
    """An arm's rounds together: output tokens/s over their summed duration, TTFT over all requests."""
    import numpy as np

    ttfts = [t * 1000 for r in runs for t in r["ttfts"]]
    tokens = sum(r["total_output_tokens"] for r in runs)
    return {
        "output_throughput": tokens / sum(r["duration"] for r in runs),
        "service_cpu_ms_per_token": 1000 * sum(r["service_cpu_s"] for r in runs) / tokens,
        "ttft_p50_ms": float(np.percentile(ttfts, 50)),
        "ttft_p99_ms": float(np.percentile(ttfts, 99)),
        "requests": len(ttfts),
        "per_round_output_throughput": [r["output_throughput"] for r in runs],
    }


def job_timings(front: str, key: str, rows: int, poll: float, work: Path) -> dict:
    """create -> running and succeeded -> first answer of the fine-tuned model, in seconds."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{front}/v1", api_key=key, max_retries=0, timeout=120)
    lines = (REPO / "examples" / "tickets" / "train.jsonl").read_text().splitlines()[:rows]
    (work / "train.jsonl").write_text("\n".join(lines) + "\n")
    uploaded = time.perf_counter()
    upload = client.files.create(file=(work / "train.jsonl").open("rb"), purpose="fine-tune")
    while upload.status != "processed":  # the file's preflight (its own figure, not the job's)
        time.sleep(poll)
        upload = client.files.retrieve(upload.id)
        if upload.status == "error":
            raise SystemExit(f"{upload.id} failed its preflight: {upload.status_details}")
    validated = time.perf_counter() - uploaded
    hyper = {"n_epochs": 1, "batch_size": 8}
    started = time.perf_counter()
    job = client.fine_tuning.jobs.create(model=SERVED, training_file=upload.id, hyperparameters=hyper)
    running = None
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(poll)
        job = client.fine_tuning.jobs.retrieve(job.id)
        if running is None and job.status not in ("validating_files", "queued"):
            running = time.perf_counter() - started
    succeeded = time.perf_counter()
    if job.status != "succeeded":
        raise SystemExit(f"job {job.id} {job.status}: {job.error}")
    hello = [{"role": "user", "content": "Hello"}]
    while True:
        try:
            client.chat.completions.create(model=job.fine_tuned_model, messages=hello, max_tokens=1)
            break
        except Exception as e:  # not loaded yet: any error until the first answer, within a minute
            if time.perf_counter() - succeeded > 60:
                raise SystemExit(f"no answer from {job.fine_tuned_model} 60 s after it succeeded: {e}") from e
            time.sleep(poll)
    return {
        "job": job.id,
        "train_rows": rows,
        "upload_to_file_processed_s": validated,
        "create_to_running_s": running,
        "succeeded_to_first_answer_s": time.perf_counter() - succeeded,
        "job_seconds": succeeded - started,
    }


def markdown(rows: dict, timings: dict, args, note: str) -> str:
    """The table, each aim marked (met: yes; missed: **no**)."""
    mark = {True: "yes", False: "**no**"}
    lines = [
        f"Front door vs the managed vLLM directly ({note}): vLLM's `bench serve`, random prompts "
        f"{args.input_len} tokens in, {args.output_len} out (ignore_eos), {args.rounds} alternating rounds.",
        "",
        "| conc | arm | output tok/s | TTFT p50 ms | TTFT p99 ms | service CPU ms/token "
        "| tok/s ratio (aim >= 0.97) | TTFT p50 added ms (aim <= 5) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, arms in rows.items():
        d, f = arms["direct"], arms["front"]
        ratio, added = f["output_throughput"] / d["output_throughput"], f["ttft_p50_ms"] - d["ttft_p50_ms"]
        arms["ratio"], arms["ttft_p50_added_ms"] = ratio, added
        met_ratio, met_added = mark[ratio >= AIMS["tok_s_ratio"]], mark[added <= AIMS["ttft_p50_added_ms"]]
        for name, r, tail in (
            ("vLLM direct", d, " | |"),
            ("front door", f, f" {ratio:.3f} ({met_ratio}) | {added:+.1f} ({met_added}) |"),
        ):
            figures = (
                f"{r['output_throughput']:.1f} | {r['ttft_p50_ms']:.1f} | {r['ttft_p99_ms']:.1f} "
                f"| {r['service_cpu_ms_per_token']:.2f}"
            )
            lines.append(f"| {c} | {name} | {figures} |{tail}")
    run, answer = timings["create_to_running_s"], timings["succeeded_to_first_answer_s"]
    lines += [
        "",
        f"Job on {timings['train_rows']} rows (polled every {args.poll} s), its file uploaded and "
        f"validated first ({timings['upload_to_file_processed_s']:.1f} s): create -> running "
        f"{run:.2f} s ({mark[run <= AIMS['seconds']]}, aim <= 2 s); succeeded -> first answer of the "
        f"fine-tuned model {answer:.2f} s ({mark[answer <= AIMS['seconds']]}, aim <= 2 s).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="results folder")
    parser.add_argument("--base", default="default", help="base model: 'default' or a model directory")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two arms")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument(
        "--min-prompts", type=int, default=8, help="requests per run: this or 2 x concurrency"
    )
    parser.add_argument("--train-rows", type=int, default=16)
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between job polls")
    parser.add_argument("--note", default="", help="what else ran on the machine, for the table")
    args = parser.parse_args()

    from tuneship.models import resolve_base

    base = resolve_base(args.base)
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    port = free_port()
    service, key = start_service(base.path, args.out / "home", port, args.out / "service.log")
    front = f"http://127.0.0.1:{port}"
    try:
        direct, internal_key = managed_vllm(service)
        started = time.perf_counter()
        wait_ready(front)
        print(f"service ready in {time.perf_counter() - started:.0f} s (managed vLLM {direct})", flush=True)
        arms = {"direct": (direct, internal_key), "front": (front, key)}
        runs: dict[int, dict[str, list[dict]]] = {c: {"direct": [], "front": []} for c in args.concurrency}
        for r in range(args.rounds):
            for c in args.concurrency:
                for arm in ("direct", "front") if r % 2 == 0 else ("front", "direct"):
                    url, arm_key = arms[arm]
                    cpu = cpu_seconds(service.pid)
                    result = bench_serve(url, arm_key, base.path, c, args, r, raw / f"{arm}-c{c}-r{r}.json")
                    result["service_cpu_s"] = cpu_seconds(service.pid) - cpu  # warm-up requests included
                    runs[c][arm].append(result)
                    print(f"round {r} c={c:<3} {arm:6} {result['output_throughput']:8.1f} tok/s "
                          f"TTFT p50 {result['median_ttft_ms']:7.1f} ms", flush=True)  # fmt: skip
        rows = {c: {arm: summarize(results) for arm, results in by_arm.items()} for c, by_arm in runs.items()}
        timings = job_timings(front, key, args.train_rows, args.poll, args.out)
    finally:
        service.send_signal(signal.SIGTERM)  # it stops its vLLM and workers
        service.wait(timeout=180)
    note = f"{base.name}, {os.cpu_count()} CPUs" + (f"; {args.note}" if args.note else "")
    table = markdown(rows, timings, args, note)
    (args.out / "results.md").write_text(table)
    results = {"base": base.name, "args": {k: str(v) for k, v in vars(args).items()}, "concurrency": rows}
    (args.out / "results.json").write_text(json.dumps({**results, "job": timings}, indent=2) + "\n")
    print()
    print(table)


if __name__ == "__main__":
    main()
