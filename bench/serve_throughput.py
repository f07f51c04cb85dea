"""Serving cost: base model, merged model, and multi-LoRA with vLLM's stock CPU ops and tuneship's.

    .venv/bin/python bench/serve_throughput.py [--max-tokens 32] [--concurrency 1 16]
        [--servers base merged stock tuneship]

On the default base model with rank-16 LoRA adapters on all linear layers, in one run on this
machine, each server in turn: the base alone, the merged export, then a LoRA server with four
adapters in a registry (hot loading on) twice, once with vLLM's stock CPU LoRA ops
(TUNESHIP_CPU_LORA_OPS=stock) and once with tuneship's. Every server runs eager (vLLM-CPU does
not compile a LoRA server, so the base and merged arms do not compile either). At each
concurrency, 2 x concurrency (at least 8) streamed chat requests of exactly --max-tokens output
tokens (ignore_eos) per arm; "mixed4" sends them round-robin to the four adapters. Prints output
tokens/s and TTFT/TPOT/E2E percentiles, every arm's throughput and TTFT p50 against the base's,
whether the two LoRA servers gave the same greedy answers, and hot-load latency p50/p95.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
KEY = "bench-key"
SERVERS = ("base", "merged", "stock", "tuneship")


def prompts(n: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in (REPO / "examples" / "tickets" / "eval.jsonl").open()]
    return [rows[i % len(rows)]["messages"][:-1] for i in range(n)]


def sweep(endpoint: str, model: str | list[str], levels: list[int], max_tokens: int) -> list[dict]:
    from tuneship.clients.latency import measure_latency

    results = []
    for c in levels:
        result = measure_latency(
            endpoint, model, prompts(max(8, 2 * c)), c, max_tokens, api_key=KEY, ignore_eos=True
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


def serve_and_sweep(
    config, levels: list[int], max_tokens: int, arms: dict, after=None
) -> tuple[dict, object]:
    """Start one server, sweep each arm (name -> model or list of models), then ``after(url)``."""
    from tuneship.serve.server import VLLMServer

    rows, started = {}, time.perf_counter()
    with VLLMServer(config) as server:
        print(f"{Path(config.log_file).stem}: ready in {time.perf_counter() - started:.0f} s", flush=True)
        for arm, model in arms.items():
            rows[arm] = sweep(server.url, model, levels, max_tokens)
        return rows, after(server.url) if after else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--hot-loads", type=int, default=10)
    parser.add_argument("--port", type=int, default=8031)
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

    import torch
    from export_time import make_adapter

    from tuneship.clients.latency import percentile
    from tuneship.export.merge import export_merged
    from tuneship.models import resolve_base
    from tuneship.serve.lora_ops import OPT_OUT_ENV
    from tuneship.serve.server import ServeConfig

    base = resolve_base("default")
    adapters = [f"lora{i}" for i in range(4)]
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(args.work_dir or work)
        work_dir.mkdir(parents=True, exist_ok=True)
        registry = work_dir / "registry"
        registry.mkdir()
        for i, name in enumerate(adapters):
            make_adapter(base.path, 16, registry / name, seed=i)
        adapter = registry / adapters[0]
        common = dict(port=args.port, api_key=KEY, kv_cache_gb=2, max_model_len=1024, eager=True)
        levels, tokens = args.concurrency, args.max_tokens
        plain = [("base", {"base": str(base.path)})] if "base" in args.servers else []
        if "merged" in args.servers:
            merged = export_merged(adapter, work_dir / "merged", base_spec=str(base.path)).out
            plain.append(("merged", {"merged": str(merged)}))
        for name, spec in plain:
            config = ServeConfig(served_name=name, log_file=str(work_dir / f"{name}.log"), **spec, **common)
            rows.update(serve_and_sweep(config, levels, tokens, {name: name})[0])
        answers: dict[str, list[str]] = {}
        hot: list[float] = []
        for ops in [ops for ops in ("stock", "tuneship") if ops in args.servers]:
            os.environ[OPT_OUT_ENV] = ops  # anything but "stock" lets the plugin choose
            config = ServeConfig(
                base=str(base.path),
                served_name="base",
                registry=str(registry),
                log_file=str(work_dir / f"{ops}.log"),
                **common,
            )
            arms = {f"{ops}-lora": adapters[0], f"{ops}-mixed4": adapters}
            loads = args.hot_loads if ops == "tuneship" else 0

            def after(url: str, loads: int = loads) -> tuple[list[str], list[float]]:
                return greedy_answers(url, adapters[0]), hot_load_times(url, registry, adapter, loads)

            got, (answers[ops], hot_ops) = serve_and_sweep(config, levels, tokens, arms, after=after)
            hot += hot_ops
            rows.update(got)

    print()
    print(
        f"machine: {torch.get_num_threads()} CPU threads; base {base.name}; LoRA rank 16 all-linear; "
        f"{args.max_tokens} output tokens per request"
    )
    columns = ["output_throughput", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "e2e_p50_ms", "e2e_p99_ms"]
    print(f"{'arm':8} {'conc':>4} " + " ".join(f"{c.removesuffix('_ms'):>17}" for c in columns))
    for arm, results in rows.items():
        for r in results:
            print(f"{arm:8} {r['concurrency']:>4} " + " ".join(f"{r[c]:>17.1f}" for c in columns))
    for i, c in enumerate(args.concurrency if "base" in rows else []):
        b = rows["base"][i]
        ratios = ", ".join(
            f"{arm} {r[i]['output_throughput'] / b['output_throughput']:.2f}x tok/s "
            f"(TTFT p50 {r[i]['ttft_p50_ms'] / b['ttft_p50_ms']:.2f}x)"
            for arm, r in rows.items()
            if arm != "base"
        )
        print(f"c={c} against base: {ratios}")
    if len(answers) == 2:
        same = sum(a == b for a, b in zip(answers["stock"], answers["tuneship"], strict=True))
        total = len(answers["stock"])
        print(f"greedy answers of {adapters[0]}, stock vs tuneship ops: {same} of {total} identical")
    if hot:
        print(
            f"hot load: p50 {percentile(hot, 50) * 1000:.0f} ms, p95 {percentile(hot, 95) * 1000:.0f} ms "
            f"over {len(hot)} loads"
        )


if __name__ == "__main__":
    main()
