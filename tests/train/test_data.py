import json

import pytest

from tuneship.errors import DataError
from tuneship.train.data import load_dataset

CHAT = [
    {"role": "system", "content": "s"},
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "a"},
]


def write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def roles(example):
    return [(m["role"], m["content"], m["weight"]) for m in example.messages]


ROWS = {
    "messages": {"messages": CHAT},
    "prompt-completion": {"prompt": "u", "completion": "a"},
    "alpaca": {"instruction": "u", "input": "", "output": "a"},
    "sharegpt": {"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]},
}


@pytest.mark.parametrize("fmt", sorted(ROWS))
def test_format_is_detected_in_every_file_type(tmp_path, fmt):
    import pandas as pd

    row = ROWS[fmt]
    rows = [row, {**row}]  # second row differs below so it is no duplicate
    key = {
        "messages": "messages",
        "prompt-completion": "prompt",
        "alpaca": "instruction",
        "sharegpt": "conversations",
    }[fmt]
    rows[1] = json.loads(json.dumps(row).replace('"u"', '"u2"'))
    paths = [
        write(tmp_path, [json.dumps(r) for r in rows]),
        tmp_path / "d.json",
        tmp_path / "d.csv",
        tmp_path / "d.parquet",
    ]
    paths[1].write_text(json.dumps(rows))
    frame = pd.DataFrame(
        [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows]
    )
    frame.to_csv(paths[2], index=False)
    pd.DataFrame(rows).to_parquet(paths[3])
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    paths.append(tmp_path / "ds")
    for path in paths:
        data = load_dataset(path)
        assert data.format == fmt, path
        assert len(data.examples) == 2 and roles(data.examples[0])[-1] == ("assistant", "a", 1), (path, key)


def test_format_override_and_alpaca_input_and_system(tmp_path):
    path = write(
        tmp_path, [json.dumps({"instruction": "do", "input": "this", "output": "done", "system": "sys"})]
    )
    data = load_dataset(path, fmt="alpaca")
    assert roles(data.examples[0]) == [
        ("system", "sys", 0),
        ("user", "do\n\nthis", 0),
        ("assistant", "done", 1),
    ]
    with pytest.raises(DataError, match="missing field 'prompt'"):
        load_dataset(path, fmt="prompt-completion")


def test_openai_weights_and_multi_turn(tmp_path):
    row = {
        "messages": [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1", "weight": 0},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2", "weight": 1},
        ]
    }
    data = load_dataset(write(tmp_path, [json.dumps(row)]))
    assert [m["weight"] for m in data.examples[0].messages] == [0, 0, 0, 1]


BAD = [
    ("{not json", "invalid JSON"),
    (json.dumps({"prompt": "p"}), "missing field 'completion'"),
    (json.dumps({"prompt": "p", "completion": " "}), "field 'completion' is empty"),
    (json.dumps({"prompt": 3, "completion": "c"}), "field 'prompt' is not a string"),
    (json.dumps([1]), "the row is an array, not an object"),
]
BAD_CHAT = [
    ([{"role": "robot", "content": "u"}, {"role": "assistant", "content": "a"}], "unknown role 'robot'"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}], "content is not a string"),
    ([{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}], "has empty content"),
    ([{"role": "user", "content": "u"}], "no assistant turn"),
    ([{"role": "assistant", "content": "a"}], "wrong turn order: messages[0] is assistant, expected user"),
    (
        [
            {"role": "user", "content": "u"},
            {"role": "user", "content": "v"},
            {"role": "assistant", "content": "a"},
        ],
        "wrong turn order: messages[1] is user, expected assistant",
    ),
    ([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "weight": 0}], "weight 0"),
    (
        [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "weight": 5}],
        "weight must be 0 or 1",
    ),
]


def test_each_bad_row_gets_its_own_message_with_file_and_line(tmp_path):
    good = json.dumps({"prompt": "p", "completion": "c"})
    lines = [good] + [line for line, _ in BAD] + [good]
    path = write(tmp_path, lines)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    text = str(info.value)
    assert f"{len(BAD) + 1} invalid row(s)" in text  # the repeated good row is a duplicate
    for lineno, (_, reason) in enumerate(BAD, start=2):
        assert f"{path}:{lineno}: {reason}" in text
    assert f"{path}:{len(lines)}: exact duplicate of {path}:1" in text


def test_each_bad_chat_gets_its_own_message(tmp_path):
    path = write(tmp_path, [json.dumps({"messages": m}) for m, _ in BAD_CHAT])
    with pytest.raises(DataError) as info:
        load_dataset(path)
    for lineno, (_, reason) in enumerate(BAD_CHAT, start=1):
        assert f"{path}:{lineno}: " in str(info.value) and reason in str(info.value), reason


def test_report_is_capped_with_a_count_of_the_rest(tmp_path):
    path = write(tmp_path, ["{bad"] * 25 + [json.dumps({"prompt": "p", "completion": "c"})])
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert "25 invalid row(s)" in str(info.value) and "... and 5 more" in str(info.value)


def test_skip_invalid_keeps_the_good_rows(tmp_path, caplog):
    path = write(tmp_path, [json.dumps({"prompt": "p", "completion": "c"}), "oops"])
    data = load_dataset(path, skip_invalid=True)
    assert len(data.examples) == 1 and len(data.problems) == 1
    assert "Skipping 1 invalid row(s)" in caplog.text


def test_rows_that_fit_no_format_or_another_one_say_so(tmp_path):
    path = write(
        tmp_path,
        [
            json.dumps({"question": "q", "answer": "a"}),
            json.dumps({"prompt": "p", "completion": "c"}),
            json.dumps({"messages": CHAT}),
        ],
    )
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert f"{path}:1: keys 'question', 'answer' fit no format; expected the keys of one of: " in str(
        info.value
    )
    assert (
        f"{path}:3: a messages row (messages), but the data's format is prompt-completion, "
        f"detected from {path}:2" in str(info.value)
    )
    alone = write(tmp_path, [json.dumps({"question": "q"})], name="none.jsonl")
    with pytest.raises(DataError, match=r"none.jsonl:1: keys 'question' fit no format"):
        load_dataset(alone)


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
    train = {json.dumps(e.messages[:-1]) for e in load_dataset(TICKETS / "train.jsonl").examples}
    held_out = {json.dumps(e.messages[:-1]) for e in load_dataset(TICKETS / "eval.jsonl").examples}
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
