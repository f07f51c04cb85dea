"""What a server holds, decided before vLLM starts: the model's context, LoRA slots, stop ids."""

import json

import pytest
from click.testing import CliRunner
from helpers import make_adapter

from tuneship.entrypoints.cli import cli
from tuneship.errors import TuneshipError
from tuneship.serve.capacity import Context, context_note, model_context
from tuneship.serve.config import ServeConfig
from tuneship.serve.server import VLLMServer


def _config_dir(tmp_path, **config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    ("config", "tokens", "key"),
    [
        ({"max_position_embeddings": 1024}, 1024, "max_position_embeddings"),
        ({"n_positions": 256}, 256, "n_positions"),  # GPT-2
        ({"max_position_embeddings": 4096, "seq_length": 2048}, 2048, "seq_length"),  # the smallest
        ({"text_config": {"max_position_embeddings": 512}}, 512, "max_position_embeddings"),
        (
            {"max_position_embeddings": 2048, "rope_scaling": {"type": "linear", "factor": 2.0}},
            4096,
            "factor 2",
        ),
        (  # llama3 RoPE: max_position_embeddings already scaled
            {"max_position_embeddings": 8192, "rope_parameters": {"rope_type": "llama3", "factor": 8.0}},
            8192,
            "max_position_embeddings in",
        ),
    ],
)
def test_the_context_is_read_from_config_json_as_vllm_derives_it(tmp_path, config, tokens, key):
    context = model_context(_config_dir(tmp_path, **config))
    assert context is not None and context.tokens == tokens and key in context.source


def test_a_config_without_a_context_length_leaves_it_to_vllm(tmp_path):
    assert model_context(_config_dir(tmp_path, hidden_size=128)) is None
    assert model_context(tmp_path / "missing") is None


def test_the_default_max_model_len_is_the_models_context(short_base, tiny_base):
    server = VLLMServer(ServeConfig(base=str(short_base), port=9))
    assert server.args[server.args.index("--max-model-len") + 1] == "auto"
    assert "Max model len: 256 tokens per request, the model's context (max_position_embeddings" in "\n".join(
        server.notes()
    )
    assert VLLMServer(ServeConfig(base=str(tiny_base), max_model_len=512, port=9)).args.count("512") == 1


def test_a_max_model_len_beyond_the_models_context_is_refused_before_vllm_starts(short_base, tmp_path):
    with pytest.raises(TuneshipError, match=r"--max-model-len 4096 is more than the model's context of 256"):
        VLLMServer(ServeConfig(base=str(short_base), max_model_len=4096, port=9))
    log = tmp_path / "vllm.log"
    command = ["serve", "--base", str(short_base), "--max-model-len", "4096", "--log-file", str(log)]
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
    assert "--max-model-len 4096 is more than the model's context of 256 tokens" in result.output
    assert "max_position_embeddings in" in result.output and "leave it out" in result.output
    assert not log.exists(), "no vLLM was started"


def test_fewer_lora_slots_than_adapters_is_said(tiny_base, tiny_run, tmp_path):
    adapters = {"a": str(tiny_run.adapter_dir), "b": str(make_adapter(tiny_base, tmp_path / "b", seed=1))}
    server = VLLMServer(ServeConfig(base=str(tiny_base), adapters=adapters, max_loras=1, port=9))
    assert server.args[server.args.index("--max-loras") + 1] == "1"
    assert (
        "LoRA slots: 1 for 2 adapters (--max-loras): a request for an adapter that is not in a slot waits "
        in ("\n".join(server.notes()))
    )
    roomy = VLLMServer(ServeConfig(base=str(tiny_base), adapters=adapters, port=9))
    assert roomy.args[roomy.args.index("--max-loras") + 1] == "2"
    assert not any(n.startswith("LoRA slots") for n in roomy.notes())


def test_the_end_of_turn_is_passed_to_vllm_when_the_base_does_not_end_sequences_with_it(
    short_base, tiny_base, tuneship_home
):
    server = VLLMServer(ServeConfig(base=str(short_base), port=9))
    directory = server.args[server.args.index("--generation-config") + 1]
    written = json.loads((server.stopping.generation_config / "generation_config.json").read_text())
    assert directory == str(server.stopping.generation_config) and written["eos_token_id"] == [0, 2]
    assert str(tuneship_home) in directory
    note = next(n for n in server.notes() if n.startswith("Stopping:"))
    assert "<|im_end|> (id 2)" in note and "[0, 2]" in note
    # A base that ends sequences at the end of turn keeps its own generation config.
    plain = VLLMServer(ServeConfig(base=str(tiny_base), port=9))
    assert plain.args[plain.args.index("--generation-config") + 1] == "auto"
    assert not any(n.startswith("Stopping:") for n in plain.notes())


def test_the_summary_says_when_vllm_fits_the_context_to_the_kv_cache():
    context = Context(8192, "max_position_embeddings in m/config.json")
    assert context_note(0, context, 8192).startswith(
        "Max model len: 8192 tokens per request, the model's context"
    )
    reduced = context_note(0, context, 3000)
    assert "3000 tokens per request: the model's context of 8192 reduced to fit the KV cache" in reduced
    assert "--kv-cache-gb" in reduced
    assert (
        context_note(512, context)
        == "Max model len: 512 tokens per request (prompt + output; --max-model-len)"
    )


def test_the_container_gets_the_generation_config_with_the_end_of_turn(short_base):
    from tuneship.serve.container import GENERATION_MOUNT, container_spec

    server = VLLMServer(ServeConfig(base=str(short_base), port=9))
    spec = container_spec(server, image="tuneship/serve:test")
    assert spec.mounts[str(server.stopping.generation_config)] == {"bind": GENERATION_MOUNT, "mode": "ro"}
    assert spec.command[spec.command.index("--generation-config") + 1] == GENERATION_MOUNT
