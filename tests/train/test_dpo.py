"""Preference pairs and ``--method dpo``: rows checked by line, DPO on real TRL/PEFT, served and A/B'd.

The pairs follow a rule a tiny random model can learn in seconds: every preferred answer starts
with "OK", every rejected one with another word, the rest of the answer being the same.
"""

import json
import re
import subprocess
import sys
from typing import get_args

import pytest
import torch
from helpers import API_KEY, STRONG_RUN, tiny_config, write_rows
from safetensors.torch import load_file

from tuneship.adapters import adapter_hash, check_adapter
from tuneship.artifacts import read_json, read_yaml
from tuneship.config import load_config
from tuneship.errors import DataError, TuneshipError
from tuneship.train.config import DPOLoss, TrainConfig
from tuneship.train.data import read_dataset
from tuneship.train.metrics import read_metrics
from tuneship.train.sft import train_model

ASKS = ["Can you check", "Please fix", "What about", "Help with", "Look into", "Any news on"]
SUBJECTS = ["the invoice", "my password", "the printer", "a refund", "the app", "my order"]
SUBJECTS += ["the login page", "shipping", "the VPN", "my account"]
TAILS = ["checking now.", "on it.", "done.", "will do."]
OTHERS = ["Sure", "Fine", "Yes", "Right"]
PROMPTS = [f"{ask} {subject}?" for subject in SUBJECTS for ask in ASKS]  # 60, every one different


def answers(i: int) -> tuple[str, str]:
    """(preferred, rejected) for prompt ``i``: the same tail, after "OK" or after another word."""
    tail = TAILS[i % len(TAILS)]
    return f"OK {tail}", f"{OTHERS[(i // len(TAILS)) % len(OTHERS)]} {tail}"


def openai_row(i: int) -> dict:
    chosen, rejected = answers(i)
    return {
        "input": {"messages": [{"role": "user", "content": PROMPTS[i]}], "tools": []},
        "preferred_output": [{"role": "assistant", "content": chosen}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


def hf_row(i: int) -> dict:
    chosen, rejected = answers(i)
    return {"prompt": PROMPTS[i], "chosen": chosen, "rejected": rejected}


N_TRAIN = 44  # the other 16 prompts are held out


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Training pairs in OpenAI's format, held-out pairs in Hugging Face's."""
    work = tmp_path_factory.mktemp("pairs")
    train = write_rows(work / "train.jsonl", [openai_row(i) for i in range(N_TRAIN)])
    held_out = write_rows(work / "held_out.jsonl", [hf_row(i) for i in range(N_TRAIN, len(PROMPTS))])
    return train, held_out


BAD_ROWS = [
    ({"prompt": "Hi", "rejected": "no"}, "missing field 'chosen'"),
    ({"prompt": "Hi", "chosen": "OK", "rejected": " OK "}, "'chosen' and 'rejected' are the same answer"),
    ({"prompt": "Hi", "chosen": "", "rejected": "no"}, "field 'chosen' is empty"),
    ({"chosen": "OK", "rejected": "no"}, "missing field 'prompt'"),
    (
        {"prompt": "Hi", "chosen": [{"role": "user", "content": "OK"}], "rejected": "no"},
        "chosen[0] is a user message; an answer is an assistant message",
    ),
    (
        {
            "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
            "chosen": "OK",
            "rejected": "no",
        },
        "'prompt' must end with a user turn or tool results",
    ),
    (
        {"prompt": "Hi", "chosen": [{"role": "assistant", "content": "OK"}] * 2, "rejected": "no"},
        "'chosen' holds 2 messages; an answer is exactly one assistant message",
    ),
    ({"prompt": "Hi", "chosen": "OK", "rejectd": "no"}, "unknown key 'rejectd' (did you mean 'rejected'?)"),
    ({"prompt": [{"rol": "user", "content": "Hi"}], "chosen": "OK", "rejected": "no"}, "prompt[0]"),
    ({"prompt": "Hi", "completion": "OK"}, "a prompt-completion row"),
]


def test_bad_preference_rows_are_named_by_line_with_their_reason(tmp_path):
    good = [hf_row(0), hf_row(1)]
    path = write_rows(tmp_path / "pairs.jsonl", good + [row for row, _ in BAD_ROWS] + [hf_row(0)])
    data = read_dataset(path)
    assert data.format == "preference" and len(data.examples) == 2
    expected = [f"{path}:{3 + k}: " for k in range(len(BAD_ROWS))]
    for prefix, (_, reason), problem in zip(expected, BAD_ROWS, data.problems, strict=False):
        assert problem.startswith(prefix) and reason in problem, (problem, reason)
    assert data.problems[-1] == f"{path}:{len(good) + len(BAD_ROWS) + 1}: exact duplicate of {path}:1"

    openai = [
        openai_row(0),
        {**openai_row(1), "preferred_output": openai_row(1)["non_preferred_output"]},
        {"input": openai_row(2)["input"], "non_preferred_output": openai_row(2)["non_preferred_output"]},
        {**openai_row(3), "input": {"messages": [{"role": "user", "content": "x"}], "tool": []}},
        {**openai_row(4), "input": [{"role": "user", "content": "x"}]},
        {**openai_row(5), "preferred_output": {"role": "assistant", "content": "OK"}},
    ]
    data = read_dataset(write_rows(tmp_path / "openai.jsonl", openai))
    assert data.format == "openai-dpo" and len(data.examples) == 1
    reasons = [p.split(": ", 1)[1] for p in data.problems]
    assert reasons == [
        "'preferred_output' and 'non_preferred_output' are the same answer (nothing to prefer)",
        "missing field 'preferred_output'",
        "unknown key 'tool' (did you mean 'tools'?)",
        "'input' is not an object (it holds 'messages' and optional 'tools')",
        "'preferred_output' must be a list holding one assistant message",
    ]
    example = read_dataset(write_rows(tmp_path / "one.jsonl", [openai_row(7)])).examples[0]
    assert example.prompt == [{"role": "user", "content": PROMPTS[7], "weight": 0}]
    assert (example.chosen["content"], example.chosen["weight"]) == ("OK will do.", 1)


def test_conversational_and_implicit_prompt_pairs_read_alike(tmp_path):
    user = {"role": "user", "content": PROMPTS[0]}
    chosen, rejected = ({"role": "assistant", "content": a} for a in answers(0))
    rows = [
        {"prompt": [user], "chosen": [chosen], "rejected": [rejected]},
        {"chosen": [user, chosen], "rejected": [user, rejected]},  # TRL's implicit prompt
    ]
    data = read_dataset(write_rows(tmp_path / "conv.jsonl", rows))
    plain = read_dataset(write_rows(tmp_path / "plain.jsonl", [hf_row(0)])).examples[0]
    assert data.problems == [f"{tmp_path / 'conv.jsonl'}:2: exact duplicate of {tmp_path / 'conv.jsonl'}:1"]
    assert (data.examples[0].prompt, data.examples[0].chosen) == (plain.prompt, plain.chosen)


def test_methods_and_data_must_match(tmp_path, pairs, ticket_rows):
    train, _ = pairs
    with pytest.raises(DataError, match=r"preference pairs \(format openai-dpo\) train with --method dpo"):
        train_model(load_config(TrainConfig, data=str(train), runs_dir=str(tmp_path)))
    chat = write_rows(tmp_path / "chat.jsonl", ticket_rows[:4])
    with pytest.raises(DataError, match="--method dpo trains on preference pairs .* not messages rows"):
        train_model(load_config(TrainConfig, data=str(chat), method="dpo", runs_dir=str(tmp_path)))
    with pytest.raises(TuneshipError, match="init_adapter: only --method dpo starts from an adapter"):
        load_config(TrainConfig, data=str(chat), init_adapter=str(tmp_path))


def test_loss_types_are_trls_own():
    from trl import DPOConfig

    help_text = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    trl_losses = set(re.findall(r"`'(\w+)'`", help_text))
    assert set(get_args(DPOLoss)) | {"exo_pair"} == trl_losses  # exo_pair needs label smoothing > 0


def test_data_check_shows_a_pair_and_gates_on_bad_rows(pairs, tmp_path, tuneship_home):
    from click.testing import CliRunner

    from tuneship.entrypoints.cli import cli

    train, _ = pairs
    result = CliRunner().invoke(cli, ["data", "check", str(train)])
    assert result.exit_code == 0, result.output
    assert "format openai-dpo, 44 rows, 0 invalid" in result.output
    assert "«OK checking now.<|im_end|>" in result.output and "«Sure checking now.<|im_end|>" in result.output
    bad = write_rows(tmp_path / "bad.jsonl", [hf_row(0), {"prompt": "Hi", "rejected": "no"}])
    result = CliRunner().invoke(cli, ["data", "check", str(bad)])
    assert result.exit_code == 1 and f"{bad}:2: missing field 'chosen'" in result.output
    assert "Traceback" not in result.output


def dpo_config(tiny_base, pairs, runs, name, **overrides):
    train, held_out = pairs
    settings = dict(method="dpo", eval_data=str(held_out), eval_steps=10, logging_steps=2, batch_size=4)
    return tiny_config(tiny_base, train, runs, name, **{**settings, **overrides})


@pytest.fixture(scope="module")
def rule_sft(tiny_base, tmp_path_factory):
    """The usual starting point of DPO: an SFT adapter, here one that answers like the rejected
    answers ("Sure checking now.") and never starts with "OK"."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": PROMPTS[i]},
                {"role": "assistant", "content": answers(i)[1]},
            ]
        }
        for i in range(N_TRAIN)
    ]
    work = tmp_path_factory.mktemp("rule-sft")
    data = write_rows(work / "sft.jsonl", rows)
    return train_model(tiny_config(tiny_base, data, work, "sft", **STRONG_RUN))


@pytest.fixture(scope="module")
def dpo_run(rule_sft, tiny_base, pairs, tmp_path_factory):
    """DPO on top of the SFT adapter, which is the reference. The base is the adapter's own
    (``default`` is not taken literally) and its LoRA settings apply (``lora_r=16`` is not).

    A random tiny model's next-token logits are near-ties, so DPO straight from the base can make
    "OK" the greedy answer by a margin that bf16 serving loses; from the SFT start, 12 steps put
    "OK" first on all 16 held-out prompts, at least 0.57 logits ahead (measured with HF, fp32).
    """
    runs = tmp_path_factory.mktemp("dpo-runs")
    config = dpo_config(
        tiny_base,
        pairs,
        runs,
        "ok",
        init_adapter=str(rule_sft.run_dir),
        learning_rate=1e-2,
        max_steps=12,
        eval_steps=12,
        lora_r=16,
    )
    return train_model(config.model_copy(update={"base": "default"}))


def test_dpo_raises_held_out_preference_accuracy_from_its_starting_adapter(dpo_run, rule_sft):
    s = dpo_run.summary
    assert s["steps"] == 12 and s["preference_accuracy_start"] <= 0.25, s
    assert s["preference_accuracy"] >= 0.9 and s["reward_accuracy"] >= 0.9 and s["reward_margin"] > 0, s
    metrics = read_metrics(dpo_run.run_dir / "metrics.jsonl")
    start = next(m for m in metrics if "eval_preference_accuracy" in m)
    # The reference is the SFT adapter, not the base: at the start, policy and reference agree.
    assert start["step"] == 0 and start["eval_rewards/margins"] == 0.0
    assert start["eval_rewards/accuracies"] == 0.0
    trained = [m for m in metrics if "rewards/accuracies" in m and "loss" in m]
    assert trained and {"rewards/margins", "tokens_per_second"} <= set(trained[-1])
    assert (dpo_run.run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    record = read_yaml(dpo_run.run_dir / "run.yaml")
    assert record["config"]["method"] == "dpo" and record["config"]["beta"] == 0.1
    lineage = read_json(dpo_run.adapter_dir / "tuneship.json")
    assert lineage["method"] == "dpo" and lineage["data"]["format"] == "openai-dpo"
    assert lineage["init_adapter"] == {
        "path": str(rule_sft.adapter_dir),
        "sha256": adapter_hash(rule_sft.adapter_dir),
        "method": "lora",
    }
    assert (
        lineage["base_model"]["path"]
        == read_json(rule_sft.adapter_dir / "tuneship.json")["base_model"]["path"]
    )
    assert read_json(dpo_run.adapter_dir / "adapter_config.json")["r"] == 8  # the SFT adapter's rank
    assert not (dpo_run.adapter_dir / "ref").exists(), "TRL's reference copy is not part of the adapter"
    before = load_file(str(rule_sft.adapter_dir / "adapter_model.safetensors"))
    after = load_file(str(dpo_run.adapter_dir / "adapter_model.safetensors"))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert check_adapter(dpo_run.adapter_dir).ok


def test_served_dpo_adapter_follows_the_rule_more_often_than_its_start(
    dpo_run, rule_sft, live_server, registry, tmp_path
):
    """``tuneship ab`` of the DPO adapter against the SFT adapter it started from, both hot-loaded."""
    from tuneship.serve.control import load

    for name, run in (("rule-sft", rule_sft), ("dpo-ok", dpo_run)):
        registry.add(name, run.run_dir)
        load(live_server.url, name, registry.root, API_KEY)
    items = [
        {
            "messages": [
                {"role": "user", "content": PROMPTS[i]},
                {"role": "assistant", "content": answers(i)[0]},
            ]
        }
        for i in range(N_TRAIN, len(PROMPTS))
    ]
    data = write_rows(tmp_path / "eval.jsonl", items)
    command = [sys.executable, "-m", "tuneship.entrypoints.cli", "ab", "--endpoint", live_server.url]
    command += ["--api-key", API_KEY, "--data", str(data), "--base", "rule-sft", "--adapter", "dpo-ok"]
    command += ["--scorer", "regex:^OK", "--max-tokens", "8", "--latency-requests", "0"]
    command += ["--out", str(tmp_path / "ab"), "--fail-if", "not-better"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    comparison = json.loads((tmp_path / "ab" / "results.json").read_text())["comparisons"]["dpo-ok"][0]
    assert comparison["metric"] == "regex:^OK" and comparison["verdict"] == "better", comparison
    assert comparison["base_mean"] <= 0.25 and comparison["adapter_mean"] >= 0.75, comparison
    assert comparison["p_value"] < 0.05 and comparison["within_noise"] is False, comparison


def test_dpo_from_the_base_is_a_new_lora_with_the_base_as_reference(tiny_base, pairs, tmp_path):
    result = train_model(dpo_config(tiny_base, pairs, tmp_path, "from-base", max_steps=2, eval_steps=2))
    lineage = read_json(result.adapter_dir / "tuneship.json")
    assert lineage["method"] == "dpo" and "init_adapter" not in lineage
    assert lineage["base_model"]["path"] == str(tiny_base)
    start = next(m for m in read_metrics(result.run_dir / "metrics.jsonl") if m["step"] == 0)
    assert start["eval_rewards/margins"] == 0.0  # the reference is the base: the adapter starts at B = 0
    assert read_json(result.adapter_dir / "adapter_config.json")["r"] == 8
    assert result.summary["steps"] == 2 and check_adapter(result.adapter_dir).ok
