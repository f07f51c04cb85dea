"""Time to ready: the base alone, base + LoRA, and a merged export of the same model, cold and warm.

    .venv/bin/python bench/startup.py [--arms base lora merged base-again merged-again ...]

On the default base model, in one run on this machine, with compile caches of its own (a fresh
VLLM_CACHE_ROOT and TORCHINDUCTOR_CACHE_DIR, so the first start of each shape is cold): each arm
starts `tuneship serve` and times the start to the first answer it gives. vLLM-CPU compiles
(torch.compile, inductor) a server without LoRA and never one with LoRA, so "lora" does not
compile; "merged" follows "base" (the base's compile is saved by then); "base-again" and
"merged-again" are second starts (warm caches), "merged-moved" the
same export copied to another directory, "merged-eager" the export with --eager. Prints seconds
per arm and each against "lora", "base" and "base-again" (the warm base).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
KEY = "bench-key"
ARMS = ("base", "lora", "merged", "base-again", "merged-again", "merged-moved", "merged-eager")


PROMPTS = ["Hi", "What is 2 + 2?", "Name a colour.", "Say something about the sea."]


def time_to_answer(config) -> tuple[float, list[str]]:
    """Seconds from starting the server to its first chat answer (one token); greedy answers
    (8 tokens) to PROMPTS."""
    from openai import OpenAI

    from tuneship.serve.server import VLLMServer

    started = time.perf_counter()
    with VLLMServer(config) as server:
        client = OpenAI(base_url=server.url, api_key=KEY, max_retries=0)
        model = config.served_name if not config.adapters else next(iter(config.adapters))
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1
        )
        seconds = time.perf_counter() - started
        answers = [
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": p}], max_tokens=8, temperature=0
            )
            .choices[0]
            .message.content
            for p in PROMPTS
        ]
        return seconds, answers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--port", type=int, default=8032)
    parser.add_argument("--work-dir", help="keep the adapter, export, caches and logs here")
    parser.add_argument(
        "--engine-env", nargs="*", default=[], metavar="KEY=VALUE", help="set for every server's engine"
    )
    args = parser.parse_args()
    os.environ.update(pair.split("=", 1) for pair in args.engine_env)

    from export_time import make_adapter

    from tuneship.export.merge import export_merged
    from tuneship.models import resolve_base
    from tuneship.serve.server import ServeConfig

    base = resolve_base("default")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        os.environ["VLLM_CACHE_ROOT"] = str(work / "vllm-cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")
        adapter = make_adapter(base.path, 16, work / "adapter", seed=0)
        merged = export_merged(adapter, work / "merged", base_spec=str(base.path), force=True).out
        moved = work / "moved" / "merged"
        shutil.rmtree(moved, ignore_errors=True)  # a --work-dir of an earlier run keeps its caches
        shutil.copytree(merged, moved)
        common = dict(port=args.port, api_key=KEY, kv_cache_gb=2, max_model_len=1024)
        specs = {
            "base": {"base": str(base.path)},
            "base-again": {"base": str(base.path)},
            "lora": {"base": str(base.path), "adapters": {"lora": str(adapter)}},
            "merged": {"merged": str(merged)},
            "merged-again": {"merged": str(merged)},
            "merged-moved": {"merged": str(moved)},
            "merged-eager": {"merged": str(merged), "eager": True},
        }
        seconds, answers = {}, {}
        for arm in args.arms:
            config = ServeConfig(
                served_name="model", log_file=str(work / f"{arm}.log"), **specs[arm], **common
            )
            seconds[arm], answers[arm] = time_to_answer(config)
            print(f"{arm}: ready and answering in {seconds[arm]:.1f} s", flush=True)
    # Compiled and eager kernels round differently, so a strongly changed model may pick other
    # greedy tokens under --eager: the compiled merged arms are compared with each other.
    merged = [arm for arm in answers if arm.startswith("merged") and arm != "merged-eager"]
    if merged:
        same = all(answers[arm] == answers[merged[0]] for arm in merged)
        print(f"greedy answers of the compiled merged arms ({', '.join(merged)}) identical: {same}")
    for arm in answers:
        print(f"  {arm}: {answers[arm]}")
    refs = [ref for ref in ("lora", "base", "base-again") if ref in seconds]
    print("\n| arm | seconds | " + " | ".join(f"/ {ref}" for ref in refs) + " |")
    print("|---|---|" + "---|" * len(refs))
    for arm, value in seconds.items():
        ratios = " | ".join(f"{value / seconds[ref]:.2f}" for ref in refs)
        print(f"| {arm} | {value:.1f} | {ratios} |")


if __name__ == "__main__":
    main()
