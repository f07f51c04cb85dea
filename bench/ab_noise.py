"""The A/A noise floor: how often two runs of one model answer differently, by concurrency.

    .venv/bin/python bench/ab_noise.py [--items 24] [--max-tokens 48] [--concurrency 1 16]

One vLLM server (the default base model, as `tuneship serve` starts it). For each
concurrency: `tuneship ab --base B --adapter B` (the A/A check: two independent arms of the
base, interleaved in one pool) on the ticket prompts, greedy; then the base arm alone, to
price the A/A arm. Prints per concurrency: items whose two answers differ, the chrF and
json_valid differences with their intervals (the noise floor), the wall time of both arms
and of the base arm alone (the A/A arm's cost).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--items", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--port", type=int, default=8033)
    args = parser.parse_args()

    from tuneship.clients.config import EvalSettings, Sampling
    from tuneship.clients.data import load_items
    from tuneship.clients.evaluate import ab_compare
    from tuneship.clients.runner import generate
    from tuneship.serve.server import ServeConfig, VLLMServer

    data = REPO / "examples" / "tickets" / "eval.jsonl"
    items = load_items(data, limit=args.items)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        config = ServeConfig(served_name="base", port=args.port, log_file=f"{work}/vllm.log")
        with VLLMServer(config) as server:
            print(f"server: {server.determinism.describe()}")
            sampling = Sampling(max_tokens=args.max_tokens)
            generate(items[:4], "base", server.url, Path(work, "warm.jsonl"), sampling, concurrency=4)
            for c in args.concurrency:
                settings = EvalSettings(
                    endpoint=server.url,
                    data=str(data),
                    limit=args.items,
                    out=f"{work}/aa-{c}",
                    scorers=["chrf", "json_valid"],
                    sampling=sampling,
                    latency_requests=0,
                    concurrency=c,
                )
                started = time.perf_counter()
                result = ab_compare(settings, "base", ["base"])
                both = time.perf_counter() - started
                started = time.perf_counter()
                generate(items, "base", server.url, Path(work, f"alone-{c}.jsonl"), sampling, concurrency=c)
                alone = time.perf_counter() - started
                rows.append((c, result.noise_floor, both, alone))
    print(f"\n{args.items} ticket prompts, greedy, max {args.max_tokens} tokens, default base model")
    columns = ["concurrency", "answers differ", "chrF diff [95% CI]", "json_valid diff [95% CI]", "A/A s"]
    print("| " + " | ".join([*columns, "base alone s"]) + " |")
    print("|---|---|---|---|---|---|")
    for c, noise, both, alone in rows:
        cells = [f"{x.diff:+.3f} [{x.ci_low:+.3f}, {x.ci_high:+.3f}]" for x in noise.comparisons]
        differ = f"{noise.answers_differ} / {noise.items} ({noise.difference_rate:.0%})"
        print(f"| {c} | {differ} | {' | '.join(cells)} | {both:.1f} | {alone:.1f} |")


if __name__ == "__main__":
    main()
