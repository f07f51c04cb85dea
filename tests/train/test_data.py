import json

import pytest
from tuneship.train.data import load_dataset

from tuneship.errors import DataError


def write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_messages_become_prompt_and_final_assistant_turn(tmp_path):
    row = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
        ]
    }
    data = load_dataset(write(tmp_path, [json.dumps(row)]))
    assert data.format == "messages"
    assert data.examples == [{"prompt": row["messages"][:2], "completion": row["messages"][2:]}]


def test_prompt_completion_is_rendered_as_a_chat_turn(tmp_path):
    data = load_dataset(write(tmp_path, [json.dumps({"prompt": "p", "completion": "c"})]))
    assert data.format == "prompt-completion"
    assert data.examples[0]["prompt"] == [{"role": "user", "content": "p"}]
    assert data.examples[0]["completion"] == [{"role": "assistant", "content": "c"}]


def test_every_bad_row_is_reported_with_file_and_line(tmp_path):
    good = json.dumps({"prompt": "p", "completion": "c"})
    path = write(
        tmp_path,
        [
            good,
            "{not json",
            json.dumps({"prompt": "p"}),
            good,
            json.dumps({"prompt": "p", "completion": ""}),
            json.dumps([1]),
        ],
    )
    with pytest.raises(DataError) as info:
        load_dataset(path)
    text = str(info.value)
    assert "4 invalid row(s)" in text
    for line, reason in (
        (2, "invalid JSON"),
        (3, "missing field 'completion'"),
        (5, "field 'completion' is empty"),
        (6, "expected a JSON object"),
    ):
        assert f"{path}:{line}: {reason}" in text


def test_chat_problems_are_named(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "u"}]},
        {"messages": [{"role": "robot", "content": "u"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},
    ]
    with pytest.raises(DataError) as info:
        load_dataset(write(tmp_path, [json.dumps(r) for r in rows]))
    text = str(info.value)
    assert ":1: the last message must be from the assistant" in text
    assert ":2: message 0 has unknown role 'robot'" in text
    assert ":3: message 0 content is not a string" in text


def test_skip_invalid_keeps_the_good_rows(tmp_path, capsys):
    path = write(tmp_path, [json.dumps({"prompt": "p", "completion": "c"}), "oops"])
    data = load_dataset(path, skip_invalid=True)
    assert len(data.examples) == 1
    assert "Skipped 1 invalid row" in capsys.readouterr().out


def test_example_data_is_valid_in_both_forms():
    from helpers import TICKETS

    for name, fmt, n in (
        ("train.jsonl", "messages", 600),
        ("train.prompt.jsonl", "prompt-completion", 600),
        ("eval.jsonl", "messages", 150),
        ("eval.prompt.jsonl", "prompt-completion", 150),
    ):
        data = load_dataset(TICKETS / name)
        assert (data.format, len(data.examples)) == (fmt, n)
    train = {json.dumps(e["prompt"]) for e in load_dataset(TICKETS / "train.jsonl").examples}
    held_out = {json.dumps(e["prompt"]) for e in load_dataset(TICKETS / "eval.jsonl").examples}
    assert not train & held_out, "held-out tickets must not occur in the training data"


def test_example_generator_is_reproducible(tmp_path):
    import subprocess
    import sys

    from helpers import REPO, TICKETS

    subprocess.run(
        [sys.executable, str(REPO / "examples" / "make_tickets.py"), "--out", str(tmp_path)], check=True
    )
    for name in ("train.jsonl", "eval.jsonl", "train.prompt.jsonl", "eval.prompt.jsonl"):
        assert (tmp_path / name).read_text() == (TICKETS / name).read_text()
