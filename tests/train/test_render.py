"""Which tokens carry loss, checked on the real default model's tokenizer and chat template."""

import json

import pytest

from tuneship.errors import DataError
from tuneship.train.data import load_dataset
from tuneship.train.render import IGNORE, render, render_dataset, show_loss_tokens


@pytest.fixture(scope="module")
def tokenizer(default_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_base.path)


def trained_text(ids, labels, tokenizer):
    return "".join(piece for piece, trained in show_loss_tokens(ids, labels, tokenizer) if trained)


def test_only_the_answer_and_its_end_of_turn_token_carry_loss(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the trap: pad == eos
    messages = [
        {"role": "user", "content": "Hi", "weight": 0},
        {"role": "assistant", "content": "Hello!", "weight": 1},
    ]
    ids, labels, text = render(messages, tokenizer)
    assert trained_text(ids, labels, tokenizer) == "Hello!<|im_end|>\n"
    assert tokenizer.eos_token_id in [label for label in labels if label != IGNORE]
    assert text.startswith("<|im_start|>system")  # the model's own template adds its default system turn


def test_multi_turn_weights_choose_the_trained_turns(tokenizer):
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1", "weight": 1},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2", "weight": 0},
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "a3", "weight": 1},
    ]
    ids, labels, _ = render(messages, tokenizer)
    assert trained_text(ids, labels, tokenizer) == "a1<|im_end|>\na3<|im_end|>\n"


def test_loss_on_all_trains_every_token(tokenizer):
    ids, labels, _ = render(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], tokenizer, loss_on="all"
    )
    assert labels == ids


def test_user_template_is_used(tokenizer):
    template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    ids, labels, text = render(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        tokenizer,
        chat_template=template,
    )
    assert text == "[user] q\n[assistant] a\n"
    assert trained_text(ids, labels, tokenizer) == " a\n"  # the token straddling the boundary is trained


def test_too_long_rows_are_reported_with_their_line(tokenizer, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"prompt": "short", "completion": "ok"})
        + "\n"
        + json.dumps({"prompt": "word " * 300, "completion": "ok"})
        + "\n"
    )
    with pytest.raises(DataError, match=rf"{path}:2: \d+ tokens, longer than max_length 128"):
        render_dataset(load_dataset(path), tokenizer, max_length=128)
    rows, stats = render_dataset(load_dataset(path), tokenizer, max_length=128, skip_invalid=True)
    assert len(rows) == 1 and stats.too_long == 1 and stats.examples == 2


def test_data_check_command_shows_stats_and_loss_tokens(tuneship_home):
    from click.testing import CliRunner
    from helpers import TICKETS

    from tuneship.entrypoints.cli import cli

    args = ["data", "check", str(TICKETS / "train.jsonl"), "--max-length", "120", "--skip-invalid"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "invalid row(s) would be dropped" in result.output
    assert "format messages, 600 rows" in result.output
    assert "tokens per example: min" in result.output and "longer than max_length 120:" in result.output
    assert "carry loss" in result.output
    assert '«{"category":' in result.output and "<|im_end|>" in result.output
