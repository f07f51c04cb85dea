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


# A Hermes-style tool template (the shape of Qwen2.5's): tools in the system turn, each call as
# <tool_call> JSON in the assistant turn, tool results as <tool_response> in a user turn.
TOOL_TEMPLATE = r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- else %}{{- 'You are helpful.' }}{%- endif %}
    {{- '\n\n# Tools\n\n<tools>' }}
    {%- for tool in tools %}{{- '\n' }}{{- tool | tojson }}{%- endfor %}
    {{- '\n</tools><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}{{- '\n' + message.content }}{%- endif %}
        {%- for call in message.tool_calls %}
            {{- '\n<tool_call>\n{"name": "' + call.function.name + '", "arguments": ' }}
            {{- call.function.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""


def test_a_tool_template_trains_the_calls_and_not_the_results(tiny_base, tmp_path):
    """OpenAI tool rows on a template that renders tools: the tools reach the system turn, the
    assistant's tool-call turn and final answer carry loss, the tool result does not."""
    from helpers import LEGACY_ROW, TOOL_ROW
    from transformers import AutoTokenizer

    from tuneship.chat import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(TOOL_ROW) + "\n")
    (rendered,), stats = render_dataset(load_dataset(path), tokenizer, 512, TOOL_TEMPLATE)
    example = load_dataset(path).examples[0]
    ids, labels, text = render(example.messages, tokenizer, TOOL_TEMPLATE, tools=example.tools)
    assert (ids, labels) == (rendered.input_ids, rendered.labels)
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather", "description": ' in text
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
    assert trained_text(ids, labels, tokenizer) == call + "It is 22 C and sunny in Paris.<|im_end|>\n"
    assert "<tool_response>\n22 C, sunny\n</tool_response>" in text  # rendered, not trained
    # the legacy functions/function_call row is the same conversation
    path.write_text(json.dumps(LEGACY_ROW) + "\n")
    legacy = load_dataset(path).examples[0]
    assert render(legacy.messages, tokenizer, TOOL_TEMPLATE, tools=legacy.tools)[:2] == (ids, labels)
    # the prompt of the last answer (what verify compares with the server) is what training saw
    prompt = render_prompt(example.messages[:3], tokenizer, TOOL_TEMPLATE, example.tools)
    assert ids[: len(prompt)] == prompt and labels[len(prompt) - 1] == IGNORE
