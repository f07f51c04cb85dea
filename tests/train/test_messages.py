"""OpenAI's chat fine-tuning format, the whole of it: every shape OpenAI accepts is read and rendered
by the real default tokenizer's chat template, and every refusal names its reason and its line.

Tool rows against a template that renders tools are in test_render.py (which tokens carry loss).
"""

import pytest
from helpers import CALL, FINAL, LEGACY_ROW, RESULT, TOOL_ROW, TOOLS, write_rows

from tuneship.errors import DataError
from tuneship.train.data import load_dataset, read_dataset
from tuneship.train.render import render, render_dataset

USER = {"role": "user", "content": "What is 2+2?"}
ANSWER = {"role": "assistant", "content": "4"}


@pytest.fixture(scope="module")
def tokenizer(default_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_base.path)


def load_one(tmp_path, row):
    return load_dataset(write_rows(tmp_path / "data.jsonl", [row])).examples[0]


# (row, what the template must show of it): each shape OpenAI's fine-tuning accepts
ACCEPTED = {
    "text parts": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "2+2?"}],
                },
                ANSWER,
            ]
        },
        "<|im_start|>user\nWhat is\n2+2?<|im_end|>",  # joined with newlines, as vLLM joins them
    ),
    "developer": (
        {"messages": [{"role": "developer", "content": "Answer briefly."}, USER, ANSWER]},
        "<|im_start|>system\nAnswer briefly.<|im_end|>",  # SmolLM2's template does not know developer
    ),
    "system and developer": (
        {
            "messages": [
                {"role": "system", "content": "S."},
                {"role": "developer", "content": "D."},
                USER,
                ANSWER,
            ]
        },
        "<|im_start|>system\nS.<|im_end|>\n<|im_start|>system\nD.<|im_end|>",
    ),
    "name and weight": (
        {
            "messages": [
                {"role": "user", "name": "alice", "content": "q1"},
                {"role": "assistant", "content": "a1", "weight": 0},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a2", "weight": 1},
            ]
        },
        "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>",
    ),
    "refusal": (
        {"messages": [USER, {"role": "assistant", "content": None, "refusal": "I cannot help with that."}]},
        "<|im_start|>assistant\nI cannot help with that.<|im_end|>",
    ),
    "assistant text parts": (
        {"messages": [USER, {"role": "assistant", "content": [{"type": "text", "text": "4"}]}]},
        "<|im_start|>assistant\n4<|im_end|>",
    ),
}


@pytest.mark.parametrize("shape", sorted(ACCEPTED))
def test_each_shape_openai_accepts_is_read_and_rendered(tmp_path, tokenizer, shape):
    row, shown = ACCEPTED[shape]
    example = load_one(tmp_path, row)
    assert all(isinstance(m["content"], str) for m in example.messages)
    ids, labels, text = render(example.messages, tokenizer)
    assert shown in text
    assert any(label != -100 for label in labels)


def test_name_is_kept_and_weight_0_turns_are_context(tmp_path, tokenizer):
    example = load_one(tmp_path, ACCEPTED["name and weight"][0])
    assert example.messages[0]["name"] == "alice"
    assert [m["weight"] for m in example.messages] == [0, 0, 0, 1]


def test_developer_stays_developer_when_the_template_names_it(tmp_path, tokenizer):
    template = (
        "{% for m in messages %}{% if m['role'] == 'developer' %}[dev] {% else %}[{{ m['role'] }}] {% endif %}"
        "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    example = load_one(tmp_path, ACCEPTED["developer"][0])
    _, _, text = render(example.messages, tokenizer, chat_template=template)
    assert text.startswith("[dev] Answer briefly.\n[user]")


def test_tool_and_legacy_function_rows_are_read_alike(tmp_path):
    tools = load_one(tmp_path, TOOL_ROW)
    legacy = load_dataset(write_rows(tmp_path / "legacy.jsonl", [LEGACY_ROW])).examples[0]
    assert tools.messages[1]["content"] == "" and tools.messages[1]["tool_calls"][0]["id"] == "call_1"
    assert [m["role"] for m in legacy.messages] == ["user", "assistant", "tool", "assistant"]
    assert legacy.messages[2]["tool_call_id"] == legacy.messages[1]["tool_calls"][0]["id"]
    assert legacy.tools == tools.tools  # as vLLM hands tools to a template: description, parameters
    assert tools.tools[0]["function"] == {**TOOLS[0]["function"]}


def test_tool_rows_are_refused_by_a_template_that_does_not_render_tools(tmp_path, tokenizer):
    """SmolLM2's template renders only role and content: a tool call would train an empty turn."""
    tools_only = {"messages": [USER, ANSWER], "tools": TOOLS}
    path = write_rows(tmp_path / "tools.jsonl", [TOOL_ROW, tools_only, {"messages": [USER, FINAL]}])
    hint = "; use a base whose chat template renders tools, or pass --chat-template FILE"
    with pytest.raises(DataError) as info:
        render_dataset(load_dataset(path), tokenizer, max_length=256)
    assert info.value.problems == [
        f"{path}:1: the chat template does not render tool calls "
        f"(the call to get_weather in messages[1] is not in its rendered turn){hint}",
        f"{path}:2: the chat template does not render tools "
        f"(the row's tools get_weather would be left out of the prompt){hint}",
    ]
    rows, stats = render_dataset(load_dataset(path), tokenizer, max_length=256, skip_invalid=True)
    assert [r.where for r in rows] == [f"{path}:3"]


def test_data_check_lists_tool_rows_the_template_cannot_render(tmp_path, tuneship_home):
    from click.testing import CliRunner

    from tuneship.entrypoints.cli import cli

    path = write_rows(tmp_path / "tools.jsonl", [TOOL_ROW, {"messages": [USER, FINAL]}])
    result = CliRunner().invoke(cli, ["data", "check", str(path)])
    assert result.exit_code == 1, result.output
    assert f"{path}:1: the chat template does not render tool calls" in " ".join(result.output.split())


CASES = [
    (
        {"messages": [USER, {"role": "assistant", "contnet": "4"}]},
        "messages[1] (assistant): unknown key 'contnet' (did you mean 'content'?)",
    ),
    (
        {"messages": [{"rol": "user", "content": "q"}, ANSWER]},
        "messages[0]: unknown key 'rol' (did you mean 'role'?)",
    ),
    (
        {"messages": [USER, {"role": "assistant"}]},
        "messages[1] (assistant) has neither content nor tool_calls",
    ),
    (
        {"messages": [{"role": "assitant", "content": "q"}]},
        "messages[0] has unknown role 'assitant' (did you mean 'assistant'?) "
        "(expected one of system, developer, user, assistant, tool)",
    ),
    ({"messages": [{"content": "q"}, ANSWER]}, "messages[0] has no role"),
    (
        {"messages": [USER, {**ANSWER, "weight": 0.5}]},
        "messages[1] (assistant): weight must be 0 or 1, got 0.5",
    ),
    (
        {"messages": [USER, {**ANSWER, "weight": True}]},
        "messages[1] (assistant): weight must be 0 or 1, got true",
    ),
    (
        {"messages": [{**USER, "weight": 1}, ANSWER]},
        "messages[0] (user): 'weight' belongs on assistant messages only",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                ANSWER,
            ]
        },
        "messages[0] (user): content[0] is an image ('image_url' part); only text parts can be trained",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "txt", "text": "q"}]}, ANSWER]},
        'messages[0] (user): content[0] is not a text part ({"type": "text", "text": "..."})',
    ),
    (
        {"messages": [{"role": "user", "content": 3}, ANSWER]},
        "messages[0] (user): content is not a string or a list",
    ),
    (
        {"messages": [USER, {**CALL, "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]},
        "messages[1] (assistant).tool_calls[0]: arguments are not valid JSON",
    ),
    (
        {"messages": [USER, {**CALL, "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]},
        "messages[1] (assistant).tool_calls[0]: arguments must be a JSON object, got list",
    ),
    (
        {"messages": [USER, {**CALL, "tool_calls": [{"function": {"arguments": "{}"}}]}]},
        "messages[1] (assistant).tool_calls[0]: the function has no name",
    ),
    (
        {"messages": [USER, {**CALL, "function_call": {"name": "f"}}]},
        "messages[1] (assistant): both tool_calls and the legacy function_call; keep tool_calls",
    ),
    ({"messages": [USER, CALL, FINAL]}, "wrong turn order: messages[2] is assistant, expected tool"),
    (
        {"messages": [USER, CALL, {**RESULT, "tool_call_id": "call_9"}, FINAL]},
        "messages[2] (tool): tool_call_id 'call_9' matches no call of the turn before (call_1)",
    ),
    (
        {"messages": [USER, CALL, {"role": "tool", "content": "22"}, FINAL]},
        "messages[2] (tool): no tool_call_id",
    ),
    ({"messages": [USER, ANSWER, RESULT]}, "wrong turn order: messages[2] is tool, expected user"),
    (
        {"messages": [USER, ANSWER, {"role": "system", "content": "late"}, USER, ANSWER]},
        "wrong turn order: messages[2] is system, expected user",
    ),
    (
        {"messages": [USER, CALL, {"role": "function", "name": "other", "content": "1"}, FINAL]},
        "messages[2] (function): answers function 'other', which the turn before did not call",
    ),
    (
        {"messages": [{**USER, "tool_calls": []}, ANSWER]},
        "messages[0] (user): 'tool_calls' belongs on assistant messages only",
    ),
    (
        {"messages": [USER, ANSWER], "tools": TOOLS, "functions": [TOOLS[0]["function"]]},
        "both 'tools' and the legacy 'functions'; keep 'tools'",
    ),
    ({"messages": [USER, ANSWER], "tols": TOOLS}, "unknown key 'tols' (did you mean 'tools'?)"),
    (
        {"messages": [USER, ANSWER], "tools": [{"type": "retrieval"}]},
        "tools[0]: type 'retrieval'; only 'function' tools exist",
    ),
    (
        {
            "messages": [USER, ANSWER],
            "tools": [{"type": "function", "function": {"name": "f", "paramters": {}}}],
        },
        "tools[0].function: unknown key 'paramters' (did you mean 'parameters'?)",
    ),
    ({"messages": [USER, {**ANSWER, "audio": {"id": "a"}}]}, "messages[1] (assistant): unknown key 'audio'"),
    ([USER, ANSWER], 'a list of messages, not an object: write the row as {"messages": [...]}'),
]


def test_each_refusal_names_its_reason_and_line(tmp_path):
    good = {"messages": [{"role": "user", "content": "fine"}, ANSWER]}
    path = write_rows(tmp_path / "bad.jsonl", [good] + [row for row, _ in CASES])
    with pytest.raises(DataError, match=f"{len(CASES)} invalid row"):
        load_dataset(path)
    data = read_dataset(path)  # every problem (the error shows the first 20)
    assert [e.where for e in data.examples] == [f"{path}:1"]
    for lineno, (_, reason) in enumerate(CASES, start=2):
        problem = next(p for p in data.problems if p.startswith(f"{path}:{lineno}: "))
        assert problem.startswith(f"{path}:{lineno}: {reason}"), (problem, reason)
