"""Serving cost: the base model, one adapter through multi-LoRA, and the merged model.

    .venv/bin/python bench/serve_throughput.py [--max-tokens 32] [--concurrency 1 8 16]

On the default base model with a rank-16 LoRA adapter on all linear layers, in one
run on this machine: one vLLM server with the base and the adapter (served from a
registry, hot loading on), then one serving the merged export. At each concurrency,
2 x concurrency (at least 8) streamed chat requests of exactly --max-tokens output
tokens (ignore_eos) per arm. Prints output tokens/s and TTFT/TPOT/E2E percentiles,
the adapter/base and merged/adapter throughput ratios, and hot-load latency p50/p95
(POST /v1/load_lora_adapter of fresh registry copies of the adapter).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
KEY = "bench-key"


def prompts(n: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in (REPO / "examples" / "tickets" / "eval.jsonl").open()]
    return [rows[i % len(rows)]["messages"][:-1] for i in range(n)]


def sweep(endpoint: str, model: str, levels: list[int], max_tokens: int) -> list[dict]:
    from tuneship.clients.latency import measure_latency

    results = []
    for c in levels:
        result = measure_latency(
            endpoint, model, prompts(max(8, 2 * c)), c, max_tokens, api_key=KEY, ignore_eos=True
        )
        results.append(result.summary())
        print(f"  {model:10} c={c:<3} {results[-1]['output_throughput']:8.1f} tok/s", flush=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--hot-loads", type=int, default=10)
    parser.add_argument("--port", type=int, default=8031)
    args = parser.parse_args()

    import torch
    from export_time import make_adapter

    from tuneship.clients.latency import percentile
    from tuneship.export.merge import export_merged
    from tuneship.models import resolve_base
    from tuneship.serve.server import ServeConfig, VLLMServer

    base = resolve_base("default")
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        adapter = make_adapter(base.path, 16, work_dir / "adapter")
        registry = work_dir / "registry"
        registry.mkdir()
        shutil.copytree(adapter, registry / "lora")
        merged = export_merged(adapter, work_dir / "merged", base_spec=str(base.path)).out
        common = dict(port=args.port, api_key=KEY, kv_cache_gb=2, max_model_len=1024)
        config = ServeConfig(base=str(base.path), served_name="base", registry=str(registry), **common)
        config.log_file = str(work_dir / "multi.log")
        with VLLMServer(config) as server:
            rows["base"] = sweep(server.url, "base", args.concurrency, args.max_tokens)
            rows["lora"] = sweep(server.url, "lora", args.concurrency, args.max_tokens)
            hot = hot_load_times(server.url, registry, adapter, args.hot_loads)
        config = ServeConfig(merged=str(merged), served_name="merged", **common)
        config.log_file = str(work_dir / "merged.log")
        with VLLMServer(config) as server:
            rows["merged"] = sweep(server.url, "merged", args.concurrency, args.max_tokens)

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
    for i, c in enumerate(args.concurrency):
        b, lo, m = (rows[a][i]["output_throughput"] for a in ("base", "lora", "merged"))
        print(f"c={c}: lora/base {lo / b:.2f}x, merged/lora {m / lo:.2f}x throughput")
    print(
        f"hot load: p50 {percentile(hot, 50) * 1000:.0f} ms, p95 {percentile(hot, 95) * 1000:.0f} ms "
        f"over {len(hot)} loads"
    )


if __name__ == "__main__":
    main()
