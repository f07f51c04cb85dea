"""A base model as many checkpoints come, through every stage: a context of 256 positions, and an
end-of-sequence token (``<|endoftext|>``) that is not the chat template's end of turn (``<|im_end|>``).

data check and train say so; the export's generation config lists the end of turn; one real vLLM
server with the default ``--max-model-len`` starts, answers, and stops at the end of turn for the
base and a LoRA adapter alike; verify does not pass a reference that never stops.
"""

import json

import pytest
from click.testing import CliRunner
from helpers import free_port, tiny_config, write_rows
from openai import OpenAI

from tuneship.artifacts import TRAIN_LOG

END_OF_TURN = 2  # <|im_end|>
END_OF_SEQUENCE = 0  # <|endoftext|>
WARNING = "the chat template ends each answer with <|im_end|> (id 2), which is not an end-of-sequence token"


@pytest.fixture(scope="module")
def short_data(ticket_rows, tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("short-data") / "train.jsonl", ticket_rows[:24])


@pytest.fixture(scope="module")
def short_run(short_base, short_data, tmp_path_factory):
    """Two steps of LoRA on the short base: far too few to learn to end an answer."""
    from tuneship.train.sft import train_model

    runs = tmp_path_factory.mktemp("short-runs")
    return train_model(tiny_config(short_base, short_data, runs, "short", max_steps=2, eval_fraction=0))


@pytest.fixture(scope="module")
def short_server(short_base, short_run, tmp_path_factory):
    """The short base and the run's adapter, every setting left at its default but the port."""
    from tuneship.serve.server import ServeConfig, VLLMServer

    logs = tmp_path_factory.mktemp("short-server")
    config = ServeConfig(
        base=str(short_base),
        served_name="short-base",
        adapters={"short-lora": str(short_run.adapter_dir)},
        port=free_port(),
        kv_cache_gb=1,
        log_file=str(logs / "vllm.log"),
    )
    with VLLMServer(config) as server:
        yield server


def test_data_check_and_train_say_the_end_of_turn_ends_no_sequence(short_base, short_data, short_run):
    from tuneship.entrypoints.cli import cli

    result = CliRunner().invoke(cli, ["data", "check", str(short_data), "--base", str(short_base)])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("Warning:"))
    assert WARNING in line and "<|endoftext|> (id 0)" in line and "--generation-config" not in line
    assert "lists it in the export's generation_config.json eos_token_id" in line
    assert WARNING in (short_run.run_dir / TRAIN_LOG).read_text()


def test_the_export_lists_the_end_of_turn_among_its_end_of_sequence_ids(short_run, tmp_path):
    from tuneship.export.merge import export_merged

    out = export_merged(short_run.run_dir, tmp_path / "short-merged", dtype="fp32").out
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [END_OF_SEQUENCE, END_OF_TURN]


def test_serve_fits_the_short_context_answers_and_stops_at_the_end_of_turn(short_server):
    client = OpenAI(base_url=short_server.url, api_key="none")
    models = {m.id: m for m in client.models.list().data}
    assert models["short-base"].model_extra["max_model_len"] == 256
    notes = "\n".join(short_server.notes())
    assert "Max model len: 256 tokens per request, the model's context (max_position_embeddings" in notes
    assert "Stopping: the chat template ends a turn with <|im_end|> (id 2)" in notes
    messages = [{"role": "user", "content": "My invoice is wrong."}]
    answer = client.chat.completions.create(
        model="short-base", messages=messages, max_tokens=8, temperature=0
    )
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.completion_tokens >= 1
    for model in ("short-base", "short-lora"):  # one generation config for the server: LoRA included
        # The model is made to write <|im_end|> first: the server must stop right there.
        forced = client.chat.completions.create(
            model=model, messages=messages, max_tokens=8, temperature=0, logit_bias={str(END_OF_TURN): 100}
        )
        assert forced.choices[0].finish_reason == "stop" and forced.usage.completion_tokens == 1, (
            model,
            forced,
        )
        # Any other token runs on to max_tokens (the stop is the end of turn, not something else).
        other = client.chat.completions.create(
            model=model, messages=messages, max_tokens=8, temperature=0, logit_bias={"42": 100}
        )
        assert other.choices[0].finish_reason == "length" and other.usage.completion_tokens == 8


def test_verify_fails_a_reference_that_never_stops(short_server, short_run, tmp_path):
    from tuneship.entrypoints.verify import FidelitySettings, verify_fidelity

    settings = FidelitySettings(
        run=str(short_run.run_dir),
        endpoint=short_server.url,
        model="short-lora",
        samples=4,
        max_tokens=16,
        out=str(tmp_path),
    )
    result = verify_fidelity(settings)
    stopping = result.checks.stopping
    assert stopping.reference_stop_rate == 0.0, "premise: two steps do not teach the model to stop"
    assert stopping.status == "failed" and "stopping" in result.failed
    held_out = sum(stopping.finish_reasons.values())
    assert f"the reference never stopped in {held_out} answers of up to 16 tokens" in (stopping.reason or "")
    assert "every trained answer ends with <|im_end|>" in stopping.reason
    assert "| stopping | failed | the reference never stopped" in (tmp_path / "fidelity.md").read_text()
