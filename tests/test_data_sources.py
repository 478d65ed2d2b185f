"""Readers: every supported format gives canonical rows; every bad input gives ONE clear DataError line."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from quill.config import DataConfig
from quill.data.sources import read_source, split_poems
from quill.errors import DataError

FIX = Path(__file__).parent / "fixtures" / "data"


def read(source, **kw):
    return read_source(DataConfig(source=str(source), **kw), FIX)


def one_line_error(source, **kw) -> str:
    with pytest.raises(DataError) as info:
        read(source, **kw)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- formats
def test_pf_messy_csv_maps_columns_and_ignores_the_index_column():
    res = read(FIX / "pf_messy.csv")
    assert res.rows_read == 6 and not res.presplit
    first = res.rows[0]
    assert set(first) == {"text", "title", "author", "tags"}  # idx is not a canonical field
    assert "Objects Used to Prop Open a Window" in first["title"]
    assert first["author"] == "Michelle Menting"
    assert first["tags"] is None  # an empty field is missing, not ""
    assert "\r\r\n" in first["text"]  # readers map; cleaning normalises (counted in one place)


def test_relative_source_is_found_via_base_dir():
    res = read_source(DataConfig(source="pf_messy.csv"), FIX)
    assert res.rows_read == 6


def test_json_list_and_jsonl_and_columns_override():
    assert [r["author"] for r in read(FIX / "poems.json").rows][:2] == ["Emily Dickinson", "William Blake"]
    rows = read(FIX / "poems.jsonl").rows
    assert len(rows) == 8 and rows[1]["tags"] == "Love, Nature"
    rows = read(FIX / "poems.jsonl", columns={"text": "title", "author": "themes"}).rows
    assert rows[0]["text"] == "Hope" and rows[0]["author"] == "Hope"


def test_json_with_split_keys_keeps_splits(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": [{"text": "a b"}], "validation": [{"text": "c d"}]}))
    res = read(path)
    assert res.presplit and set(res.splits) == {"train", "val"}


def test_gz_variants(tmp_path):
    for name in ("poems.jsonl", "pf_messy.csv", "poems.json"):
        target = tmp_path / (name + ".gz")
        target.write_bytes(gzip.compress((FIX / name).read_bytes()))
        assert read(target).rows == read(FIX / name).rows


def test_parquet(tmp_path):
    path = tmp_path / "poems.parquet"
    frame = pd.DataFrame({"Poem": ["one\ntwo", "three"], "Poet": ["A", None], "Tags": [["x", "y"], []]})
    frame.to_parquet(path)
    rows = read(path).rows
    assert rows[0] == {"text": "one\ntwo", "author": "A", "tags": ["x", "y"]}
    assert rows[1]["author"] is None
    assert read(path, max_rows=1).rows_read == 1


def test_txt_folder_rule_one_poem_per_file_unless_separated():
    res = read(FIX / "txt")
    texts = [r["text"] for r in res.rows]
    # 01: one poem whose stanza break (one blank line) is kept
    assert texts[0] == "The fog comes\non little cat feet.\n\nIt sits looking\nover harbor and city"
    # 02: a --- line separates two poems (CRLF file); the stanza break stays inside the first
    assert texts[1] == "First poem, line one\nfirst poem, line two\n\nsecond stanza"
    assert texts[2] == "Second poem here\nand its last line"
    # 03: two or more blank lines separate poems
    assert texts[3:] == ["Poem A one\nPoem A two\n\nPoem A stanza two", "Poem B one\nPoem B two", "Poem C one"]
    assert res.skipped == {"empty_file": 1}  # counted, not silently dropped; notes.md ignored
    assert res.rows_read == 7


def test_split_poems_keeps_single_blank_lines():
    assert split_poems("a\n\nb") == ["a\n\nb"]
    assert split_poems("a\n \n\t\nb") == ["a", "b"]


def test_max_rows_csv_and_jsonl():
    assert read(FIX / "pf_messy.csv", max_rows=2).rows_read == 2
    assert read(FIX / "poems.jsonl", max_rows=3).rows_read == 3


def test_instruction_kind_detects_conversation_messages_prompt():
    assert "conversation" in read(FIX / "instructions.jsonl", kind="instructions").rows[0]
    assert "messages" in read(FIX / "messages.jsonl", kind="instructions").rows[0]
    assert {"prompt", "completion"} <= set(read(FIX / "prompt_completion.jsonl", kind="instructions").rows[0])


# --------------------------------------------------------------------------- bad input
def test_missing_file():
    assert "nope.csv: file not found" in one_line_error(FIX / "nope.csv")


def test_missing_configured_column_names_column_and_columns_found():
    msg = one_line_error(FIX / "pf_messy.csv", columns={"text": "Body"})
    assert "pf_messy.csv" in msg and "'Body'" in msg and "Title" in msg and "Poem" in msg


def test_no_text_column():
    msg = one_line_error(FIX / "no_text_column.csv")
    assert "no_text_column.csv" in msg and "columns: name, year" in msg


def test_no_instruction_column():
    msg = one_line_error(FIX / "no_text_column.csv", kind="instructions")
    assert "conversation" in msg and "columns: name, year" in msg


def test_not_utf8_names_file_and_byte(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("title,text\nA,caf\u00e9 au lait\n".encode("latin-1"))
    msg = one_line_error(path)
    assert "latin1.csv" in msg and "not UTF-8" in msg and "byte 16" in msg and "line 2" in msg


def test_not_utf8_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"ok\n\xff\xfe bad\n")
    assert "a.txt: not UTF-8" in one_line_error(tmp_path)
    bad = tmp_path / "b.jsonl"
    bad.write_bytes(b'{"text": "\xe9"}\n')
    assert "b.jsonl: not UTF-8" in one_line_error(bad)


def test_empty_files(tmp_path):
    assert "empty.csv: empty file" in one_line_error(FIX / "empty.csv")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    assert "blank.jsonl: no rows" in one_line_error(tmp_path / "blank.jsonl")
    (tmp_path / "empty.json").write_text("  ")
    assert "empty.json: empty file" in one_line_error(tmp_path / "empty.json")


def test_broken_csv_quoting_names_file_and_row():
    msg = one_line_error(FIX / "broken_quote.csv")
    assert "broken_quote.csv: broken CSV" in msg and "row 3" in msg
    msg = one_line_error(FIX / "bad_fields.csv")
    assert "bad_fields.csv" in msg and "line 3" in msg


def test_broken_json_names_line():
    assert "bad_line.jsonl: line 2: not valid JSON" in one_line_error(FIX / "bad_line.jsonl")
    assert "pf_messy.csv: line 1: not valid JSON" in one_line_error(FIX / "pf_messy.csv", format="json")


def test_unknown_extension_and_empty_folder(tmp_path):
    (tmp_path / "poems.docx").write_text("x")
    assert "unknown file type" in one_line_error(tmp_path / "poems.docx")
    (tmp_path / "empty_dir").mkdir()
    assert "no .txt files" in one_line_error(tmp_path / "empty_dir")


def test_bad_parquet(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_text("not parquet")
    assert "x.parquet: not a readable Parquet file" in one_line_error(path)


def test_copied_fixture_folder_is_read_the_same(tmp_path):
    shutil.copytree(FIX / "txt", tmp_path / "txt")
    assert read(tmp_path / "txt").rows == read(FIX / "txt").rows
