"""Data files as users bring them: encodings, byte-order marks, CRLF, blank lines, CSV and
Parquet quirks, bytes that are not UTF-8, lone surrogates, and plain ``text`` rows."""

import json

import pytest

from tuneship.errors import DataError
from tuneship.train.data import TextExample, load_dataset, read_dataset

BOM = b"\xef\xbb\xbf"
PC = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def wheres(data):
    return [e.where for e in data.examples]


def problems_of(path, **kwargs):
    data = read_dataset(path, **kwargs)
    return data, "\n".join(data.problems)


# --- UTF-8 with or without a byte-order mark, CRLF, blank lines: in every file type ---------------


@pytest.mark.parametrize("bom", [b"", BOM], ids=["plain", "bom"])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_jsonl_quirks_keep_every_row_and_its_line(tmp_path, bom, newline):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(PC[0]).encode(), b"", b"   ", json.dumps(PC[1]).encode(), b""]
    path.write_bytes(bom + newline.join(lines) + newline)
    data = load_dataset(path)
    assert data.format == "prompt-completion" and wheres(data) == [f"{path}:1", f"{path}:4"]
    assert data.examples[1].messages[-1]["content"] == "c2"  # no stray CR


@pytest.mark.parametrize("bom", [b"", BOM], ids=["plain", "bom"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_json_list_quirks_locate_each_row_at_its_line(tmp_path, bom, newline):
    path = tmp_path / "d.json"
    text = json.dumps(PC, indent=2).replace("\n", newline)
    path.write_bytes(bom + text.encode() + newline.encode() * 3)
    data = load_dataset(path)
    assert wheres(data) == [f"{path}:2", f"{path}:6"]  # the line each object starts on


def test_excel_csv_utf8_with_bom_crlf_and_empty_rows(tmp_path):
    """Excel's "CSV UTF-8" export: BOM, CRLF, a multi-line cell, and empty rows at the end."""
    path = tmp_path / "excel.csv"
    body = 'prompt,completion\r\n"first\nline",c1\r\n,\r\np2,c2\r\n,\r\n,\r\n'
    path.write_bytes(BOM + body.encode())
    data = load_dataset(path)
    assert data.format == "prompt-completion" and wheres(data) == [f"{path}:2", f"{path}:5"]
    assert data.examples[0].messages[0]["content"] == "first\nline"


def test_csv_semicolons_pandas_index_and_json_or_python_cells(tmp_path):
    """Excel in a comma-decimal locale writes ';'; pandas writes an unnamed index column and a
    list cell as a Python literal; messages and tools cells are decoded either way."""
    path = tmp_path / "d.csv"
    python_literal = repr(CHAT)  # [{'role': 'user', ...}]
    json_cell = json.dumps([*CHAT[:1], {"role": "assistant", "content": "hey"}]).replace('"', '""')
    path.write_text(f';messages;tags\n0;"{python_literal}";\n1;"{json_cell}";\n', encoding="utf-8")
    data = load_dataset(path)
    assert data.format == "messages" and [e.messages[-1]["content"] for e in data.examples] == [
        "hello",
        "hey",
    ]


def test_csv_row_problems_name_their_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\np,c\np2,c2,extra\nmessages are fine\n"x",y\n', encoding="utf-8")
    data, text = problems_of(path)
    assert f"{path}:3: 3 cells, but the header has 2 columns" in text
    assert f"{path}:4: 1 cells, but the header has 2 columns" in text
    assert len(data.examples) == 2
    broken = tmp_path / "m.csv"
    broken.write_text('messages\n"[{""role"": ""user"""\n', encoding="utf-8")
    _, text = problems_of(broken)
    assert text.startswith(f"{broken}:2: column 'messages' is not valid JSON (")


def test_parquet_and_datasets_quirks(tmp_path):
    """A column name with the BOM pandas keeps from an Excel CSV, an all-empty row, and
    messages whose structs hold nulls for the keys a message never had (Arrow unifies them)."""
    import pandas as pd
    from datasets import Dataset

    rows = [
        {"\ufeffmessages": [{**CHAT[0], "weight": None}, {**CHAT[1], "weight": 1}]},
        {"\ufeffmessages": None},
        {"\ufeffmessages": [{"role": "user", "content": "q", "weight": None}, {**CHAT[1], "weight": 0}]},
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    for path in (tmp_path / "d.parquet", tmp_path / "ds"):
        data, text = problems_of(path)
        assert data.format == "messages" and wheres(data) == [f"{path}: row 1"], path
        assert text == f"{path}: row 3: every assistant turn has weight 0 (nothing to learn)", path


def test_utf16_file_as_powershell_writes_it(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes("\r\n".join(json.dumps(r) for r in PC).encode("utf-16"))  # with its BOM
    assert len(load_dataset(path).examples) == 2


def test_json_lines_in_a_json_file_and_a_json_list_in_a_jsonl_file(tmp_path):
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps(r) for r in PC) + "\n")
    listed = tmp_path / "listed.jsonl"
    listed.write_text(json.dumps(PC, indent=2))
    assert wheres(load_dataset(lines)) == [f"{lines}:1", f"{lines}:2"]
    assert wheres(load_dataset(listed)) == [f"{listed}:2", f"{listed}:6"]
    wrapper = tmp_path / "one.json"
    wrapper.write_text(json.dumps({"rows": PC}))
    with pytest.raises(
        DataError, match=r"one.json: expected a JSON list of rows .*found an object with keys rows"
    ):
        load_dataset(wrapper)


# --- invalid UTF-8 and lone surrogates: one problem per row, the other rows still checked ---------


def test_bytes_that_are_not_utf8_are_one_row_problem_each(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b'{"prompt": "p1", "completion": "c1"}\n'
        b'{"prompt": "caf\xe9", "completion": "c"}\n'  # Latin-1 in a string
        b'{"prompt": "p3", "completion": 3}\n'  # another problem, still found
        b'\xff{"prompt": "p4", "completion": "c4"}\n'  # a stray byte outside any string
        b'{"prompt": "p5", "completion": "c5"}\n'
    )
    data, text = problems_of(path)
    assert data.problems == [
        f"{path}:2: not valid UTF-8 (byte 0xe9 in 'prompt'; save the file as UTF-8)",
        f"{path}:3: field 'completion' is not a string",
        f"{path}:4: not valid UTF-8 (byte 0xff at column 1; save the file as UTF-8)",
    ]
    assert wheres(data) == [f"{path}:1", f"{path}:5"]
    with pytest.raises(DataError, match="3 invalid row"):
        load_dataset(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_lone_surrogate_escape_is_not_valid_utf8(tmp_path, suffix):
    """json.loads accepts "\\ud83d" (half an emoji); no tokenizer can encode it."""
    rows = [{"messages": CHAT}, {"messages": [CHAT[0], {"role": "assistant", "content": "\ud83d"}]}]
    path = tmp_path / f"d{suffix}"
    path.write_text(
        "\n".join(json.dumps(r) for r in rows) if suffix == ".jsonl" else json.dumps(rows, indent=1)
    )
    line = 2 if suffix == ".jsonl" else 14  # where the second object starts
    data, _ = problems_of(path)
    assert data.problems == [
        f"{path}:{line}: not valid UTF-8 (lone surrogate \\ud83d in 'messages[1].content': "
        "half of a character pair)"
    ]
    assert len(data.examples) == 1


def test_bytes_that_are_not_utf8_in_json_and_csv_files(tmp_path):
    listed = tmp_path / "d.json"
    listed.write_bytes(
        b'[\n{"prompt": "p", "completion": "c"},\n{"prompt": "\x93q\x94", "completion": "c"}\n]'
    )
    table = tmp_path / "d.csv"
    table.write_bytes(b"prompt,completion\r\np,c\r\nq,na\xefve\r\n")
    assert problems_of(listed)[0].problems == [
        f"{listed}:3: not valid UTF-8 (byte 0x93 in 'prompt'; save the file as UTF-8)"
    ]
    assert problems_of(table)[0].problems == [
        f"{table}:3: not valid UTF-8 (byte 0xef in 'completion'; save the file as UTF-8)"
    ]


# --- rows that are no object, or fit no format -----------------------------------------------------


def test_rows_that_are_arrays_or_strings_get_their_own_reason(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"messages": CHAT}, CHAT, [1, 2], "text", None]) + "\n")
    assert problems_of(path)[0].problems == [
        f'{path}:2: a list of messages, not an object: write the row as {{"messages": [...]}}',
        f'{path}:3: the row is an array, not an object (one object per row, e.g. {{"messages": [...]}})',
        f'{path}:4: the row is a string, not an object (one object per row, e.g. {{"messages": [...]}})',
        f'{path}:5: the row is null, not an object (one object per row, e.g. {{"messages": [...]}})',
    ]


def test_no_message_names_a_flag_that_was_not_passed(tmp_path, caplog):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(PC[0]) + "\n{oops\n")
    load_dataset(path, skip_invalid=True)
    assert "Skipping 1 invalid row(s)" in caplog.text and "--skip-invalid" not in caplog.text


# --- plain text rows ---------------------------------------------------------------------------------


def test_text_rows_are_a_detected_format_in_every_file_type(tmp_path):
    import pandas as pd

    rows = [{"text": "The seed guide says hello."}, {"text": "A second\nparagraph."}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        data = load_dataset(tmp_path / name)
        assert data.format == "text", name
        assert [e.text for e in data.examples] == [r["text"] for r in rows], name
        assert all(isinstance(e, TextExample) for e in data.examples)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(json.dumps(r) for r in [rows[0], {"messages": CHAT}, {"text": " "}]))
    _, text = problems_of(mixed)
    assert (
        f"{mixed}:2: a messages row (messages), but the data's format is text, detected from {mixed}:1"
        in text
    )
    assert f"{mixed}:3: field 'text' is empty" in text


@pytest.fixture(scope="module")
def tokenizer(default_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_base.path)


def test_text_rows_train_every_token_and_end_with_eos(tokenizer, tmp_path):
    from tuneship.train.render import IGNORE, render_dataset

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "Tickets about billing go to finance."}) + "\n")
    rows, stats = render_dataset(load_dataset(path), tokenizer, max_length=64, loss_on="assistant")
    ids, labels = rows[0].input_ids, rows[0].labels
    assert labels == ids and IGNORE not in labels  # loss on every token, whatever loss_on says
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
    assert tokenizer.decode(ids[:-1]) == "Tickets about billing go to finance."  # no chat template
    assert stats.trained_tokens == stats.tokens == len(ids)


def test_a_tiny_run_trains_on_text_rows(tiny_base, tmp_path):
    from helpers import tiny_config, write_rows

    from tuneship.train.sft import train_model

    rows = [{"text": f"Ticket {i}: the printer on floor {i} is out of toner."} for i in range(8)]
    data = write_rows(tmp_path / "text.jsonl", rows)
    result = train_model(tiny_config(tiny_base, data, tmp_path / "runs", "text", max_steps=2))
    assert result.summary["steps"] == 2 and result.summary["train_loss"] > 0
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
