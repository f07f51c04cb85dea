"""Evaluation data is read by the same rules as training data (tuneship.rows)."""

import json

import pytest

from tuneship.clients.data import load_items
from tuneship.errors import EvalError

BOM = b"\xef\xbb\xbf"
ROWS = [
    {"prompt": "2+2?", "completion": "4", "id": "sum"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
]


def test_bom_crlf_and_blank_lines_in_jsonl(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_bytes(BOM + b"\r\n\r\n".join(json.dumps(r).encode() for r in ROWS) + b"\r\n")
    items = load_items(path)
    assert [(i.id, i.references) for i in items] == [("sum", ["4"]), ("e-3", ["hello"])]  # id: the line


def test_excel_csv_and_parquet_eval_files(tmp_path):
    import pandas as pd

    csv_path = tmp_path / "e.csv"
    cell = json.dumps(ROWS[1]["messages"][:1]).replace('"', '""')
    csv_path.write_bytes(BOM + f'messages,reference,tags\r\n"{cell}",hello,"[""greet""]"\r\n,,\r\n'.encode())
    items = load_items(csv_path)
    assert len(items) == 1 and items[0].references == ["hello"] and items[0].tags == ["greet"]
    assert items[0].messages == [{"role": "user", "content": "hi"}]
    pd.DataFrame([ROWS[0], {"prompt": "3+3?", "completion": "6"}]).to_parquet(tmp_path / "e.parquet")
    assert [i.references for i in load_items(tmp_path / "e.parquet")] == [["4"], ["6"]]


def test_invalid_utf8_and_lone_surrogates_name_their_line_and_the_rest_is_checked(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_bytes(
        json.dumps(ROWS[0]).encode()
        + b'\n{"prompt": "r\xe9sum\xe9?", "completion": "x"}\n'
        + json.dumps({"prompt": "\ud83d", "completion": "x"}).encode()
        + b"\n"
        + json.dumps([1]).encode()
        + b"\n"
    )
    with pytest.raises(EvalError) as info:
        load_items(path)
    assert str(info.value).splitlines() == [
        f"{path}: 3 invalid row(s):",
        f"  {path}:2: not valid UTF-8 (byte 0xe9 in 'prompt'; save the file as UTF-8)",
        f"  {path}:3: not valid UTF-8 (lone surrogate \\ud83d in 'prompt': half of a character pair)",
        f'  {path}:4: the row is an array, not an object (one object per row, e.g. {{"messages": [...]}})',
    ]


def test_eval_and_ab_name_bad_data_before_asking_the_server(tmp_path):
    from helpers import free_port

    from tuneship.clients.config import EvalSettings
    from tuneship.clients.evaluate import ab_compare, evaluate

    path = tmp_path / "e.csv"
    path.write_bytes(BOM + b"prompt,reference\r\n2+2?,4\r\nna\xefve?,x\r\n")
    settings = EvalSettings(endpoint=f"http://127.0.0.1:{free_port()}/v1", data=str(path), out=str(tmp_path))
    reason = f"{path}:3: not valid UTF-8 \\(byte 0xef in 'prompt'"
    with pytest.raises(EvalError, match=reason):
        evaluate(settings, "base")
    with pytest.raises(EvalError, match=reason):
        ab_compare(settings, "base", ["adapter"])
