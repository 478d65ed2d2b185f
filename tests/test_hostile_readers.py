"""Hostile inputs for every data reader and the instruction parser (property-based, bounded for CI).

The one rule: whatever bytes a file holds, reading it ends in EITHER a ``DataError`` of one line that names
the file, OR rows kept + rows skipped that add up to rows read (``read_source``: ``rows_read ==
len(rows) + sum(skipped)``; ``prepare_stage_data``: ``rows_in == rows_out + sum(dropped)``). Never another
exception, never a hang (each example runs under a wall-clock alarm).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quill.config import DataConfig, StageConfig
from quill.data.instructions import parse_conversation, parse_messages, row_to_instruction, validate_messages
from quill.data.prepare import prepare_stage_data
from quill.data.sources import read_source
from quill.errors import DataError

# per property: enough to find the classic crashes, small enough for CI; QUILL_FUZZ_EXAMPLES=2000 for a deep hunt
EXAMPLES = int(os.environ.get("QUILL_FUZZ_EXAMPLES", "40"))
TIME_BOUND_S = 10.0    # per example: a hang is a failure, not a slow test
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 40,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

REASONS = {"no_roles", "no_user", "no_assistant", "bad_turn_order", "no_final_answer", "empty_prompt",
           "empty_answer", "bad_messages", "empty_text"}

# fragments that break naive readers: quotes, separators, NULs, CR, BOMs, speaker markers, control strings
FRAGMENTS = ['"', "'", ",", ";", "\t", "\n", "\r", "\r\n", "\x00", "\ufeff", "\u2028", "\\", "{", "}", "[", "]",
             ":", "User:", "Assistant:", "System:", "Human:", "User: User:", "Assistant: User:", "\nUser:",
             "\nAssistant:", "\nUser: hi\nAssistant:", "<|im_end|>", "<|endoftext|>", "<|im_start|>",
             "<|endfpoem|>", "---", "\n\n\n", "text", "poem", "conversation", "messages", "prompt", "completion",
             "é", "日本", "🙂", " ", "a", "The rose is red", "null", "NaN", "1e999", "-"]
ENCODINGS = ["utf-8", "utf-8-sig", "latin-1", "utf-16", "utf-16-le", "cp1252"]


@contextlib.contextmanager
def time_bound(seconds: float = TIME_BOUND_S):
    """SIGALRM after ``seconds``: a reader stuck in a Python loop fails the example instead of hanging CI."""
    def boom(*_):
        raise TimeoutError(f"reader ran past {seconds} s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - start < seconds


def hostile_text() -> st.SearchStrategy[str]:
    return st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=20)), max_size=60).map("".join)


def encoded(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


def check_source(path: Path, kind: str = "poems", fmt: str = "auto") -> str:
    """Read ``path`` through read_source AND prepare_stage_data; returns "error" or "rows"."""
    cfg = DataConfig(source=str(path), kind=kind, format=fmt)
    with time_bound():
        try:
            src = read_source(cfg)
        except DataError as err:
            assert_clear(err, path)
            return "error"
        assert src.rows_read == len(src.rows) + sum(src.skipped.values()), (src.rows_read, src.skipped)
        stage = StageConfig(name="s", kind="sft" if kind != "poems" else "dapt", data=cfg)
        try:
            prepared = prepare_stage_data(stage)
        except DataError as err:
            assert_clear(err, path)
            return "error"
    rep = prepared.report
    assert rep["rows_in"] == rep["rows_out"] + sum(rep["dropped"].values()), rep
    assert rep["rows_out"] == sum(len(v) for v in prepared.splits.values())
    for rows in prepared.splits.values():
        for rec in rows:
            if prepared.kind == "poems":
                assert isinstance(rec["text"], str) and rec["text"].strip() and "\x00" not in rec["text"]
            else:
                assert rec["messages"][-1]["role"] == "assistant" and rec["messages"][-1]["content"].strip()
    return "rows"


def assert_clear(err: DataError, path: Path) -> None:
    msg = str(err)
    assert "\n" not in msg, f"multi-line error: {msg!r}"
    assert path.name in msg, f"error does not name the file: {msg!r}"


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- arbitrary bytes, every reader
@FUZZ
@given(data=st.binary(max_size=3000), name=st.sampled_from(
    ["x.csv", "x.tsv", "x.json", "x.jsonl", "x.parquet", "x.txt", "x.csv.gz", "x.jsonl.gz", "x.txt.gz"]),
    kind=st.sampled_from(["poems", "instructions"]), gz=st.booleans())
def test_arbitrary_bytes_end_in_a_clear_error_or_counted_rows(data, name, kind, gz):
    if gz:
        data = gzip.compress(data)
    with tempfile.TemporaryDirectory() as d:
        check_source(write(Path(d), name, data), kind)


@FUZZ
@given(text=hostile_text(), encoding=st.sampled_from(ENCODINGS),
       name=st.sampled_from(["x.csv", "x.tsv", "x.jsonl", "x.json", "x.txt"]),
       kind=st.sampled_from(["poems", "instructions"]))
def test_hostile_text_in_odd_encodings(text, encoding, name, kind):
    """Quotes, NULs, CRs, BOMs, speaker markers and control strings, saved as UTF-8/UTF-16/latin-1."""
    header = {"x.csv": "text,title\n", "x.tsv": "text\ttitle\n"}.get(name, "")
    with tempfile.TemporaryDirectory() as d:
        check_source(write(Path(d), name, encoded(header + text, encoding)), kind)


def test_non_utf8_files_are_named_errors(tmp_path):
    for encoding in ("utf-16", "latin-1"):
        path = write(tmp_path, f"poems-{encoding}.csv", "text\nCaf\u00e9 au lait\n".encode(encoding))
        with pytest.raises(DataError, match=f"poems-{encoding}.csv.*not UTF-8"):
            read_source(DataConfig(source=str(path)))
    bom = write(tmp_path, "bom.csv", "text\nA rose\n".encode("utf-8-sig"))
    assert read_source(DataConfig(source=str(bom))).rows == [{"text": "A rose"}]


# --------------------------------------------------------------------------- well-formed containers, odd contents
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), hostile_text())
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["role", "content", "from", "value", "x"]),
                                                 inner, max_size=4)), max_leaves=12)
FIELDS = ["text", "poem", "title", "author", "tags", "conversation", "messages", "prompt", "completion", "Poem"]
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "gpt", "human", "x", 3]),
                                 "content": st.one_of(hostile_text(), JSON_LEAF)})
RECORD = st.dictionaries(st.sampled_from(FIELDS), st.one_of(JSON_VALUE, st.lists(MESSAGE, max_size=5)), max_size=5)


@FUZZ
@given(records=st.lists(st.one_of(RECORD, JSON_LEAF), max_size=12), fmt=st.sampled_from(["json", "jsonl", "split"]),
       kind=st.sampled_from(["poems", "instructions"]))
def test_json_records_of_any_shape(records, fmt, kind):
    if fmt == "jsonl":
        name, data = "x.jsonl", "\n".join(json.dumps(r) for r in records)
    elif fmt == "json":
        name, data = "x.json", json.dumps(records)
    else:
        half = len(records) // 2
        name, data = "x.json", json.dumps({"train": records[:half], "validation": records[half:]})
    with tempfile.TemporaryDirectory() as d:
        check_source(write(Path(d), name, data.encode()), kind)


@FUZZ
@given(rows=st.lists(st.tuples(hostile_text(), hostile_text()), max_size=10), kind=st.sampled_from(
    ["poems", "instructions"]), gz=st.booleans())
def test_parquet_with_hostile_strings(rows, kind, gz):
    import pyarrow as pa
    import pyarrow.parquet as pq
    column = "conversation" if kind == "instructions" else "text"
    buf = io.BytesIO()
    pq.write_table(pa.table({column: [a for a, _ in rows], "title": [b for _, b in rows]}), buf)
    data = gzip.compress(buf.getvalue()) if gz else buf.getvalue()
    with tempfile.TemporaryDirectory() as d:
        check_source(write(Path(d), "x.parquet", data), kind)


@FUZZ
@given(files=st.lists(st.tuples(hostile_text(), st.sampled_from(ENCODINGS), st.booleans()), min_size=1, max_size=5))
def test_txt_folder_with_hostile_files(files):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "poems"
        (folder / "sub").mkdir(parents=True)
        for i, (text, encoding, gz) in enumerate(files):
            data = encoded(text, encoding)
            name = f"{'sub/' if i % 2 else ''}{i:02d}.txt" + (".gz" if gz else "")
            write(folder, name, gzip.compress(data) if gz else data)
        with time_bound():
            try:
                src = read_source(DataConfig(source=str(folder)))
            except DataError as err:
                assert "\n" not in str(err) and ".txt" in str(err)
                return
        assert src.rows_read == len(src.rows) + sum(src.skipped.values())
        check_source(folder)


def test_pathological_files(tmp_path):
    """The classic killers, each once: a 2 MB line, a deep JSON nest, a quote never closed, a truncated gzip,
    NUL bytes everywhere, a header-only CSV, empty poems, a bad saved-dataset folder."""
    huge = "x" * 2_000_000
    deep = "[" * 100_000 + "]" * 100_000
    cases = {
        "huge.csv": f"text\n{huge}\n".encode(),
        "huge.jsonl": (json.dumps({"text": huge}) + "\n").encode(),
        "huge.txt": huge.encode(),
        "deep.json": deep.encode(),
        "deep.jsonl": deep.encode(),
        "deep_obj.jsonl": ('{"text": ' + "[" * 50_000 + "]" * 50_000 + "}").encode(),
        # parses (< Python's recursion limit) but later steps would recurse per level: refused at read time
        "nest500.jsonl": ('{"text": ' + "[" * 500 + "]" * 500 + "}").encode(),
        "nest500.json": ('[{"tags": ' + "{\"a\": " * 500 + "1" + "}" * 500 + ', "text": "a"}]').encode(),
        "quote.csv": b'text,title\n"A rose that never closes,x\nnext,y\n',
        "nul.csv": b"text\x00,title\nA\x00rose,\x00\n",
        "nul.jsonl": b'{"text": "a\\u0000b"}\n\x00\n',
        "header_only.csv": b"text,title\n",
        "empty_poems.csv": b'text,title\n"",a\n"   ",b\n"\n\n",c\n',
        "empty_poems.jsonl": b'{"text": ""}\n{"text": null}\n{"text": []}\n{"text": {}}\n',
        "only_bom.txt": "\ufeff".encode("utf-8"),
        "truncated.jsonl.gz": gzip.compress(b'{"text": "a rose"}\n' * 100)[:40],
        "crlf_only.txt": b"\r\n\r\r\n" * 10,
    }
    outcomes = {}
    for name, data in cases.items():
        outcomes[name] = check_source(write(tmp_path, name, data))
    assert outcomes["huge.csv"] == outcomes["huge.jsonl"] == outcomes["huge.txt"] == "rows"
    assert outcomes["deep.json"] == outcomes["deep.jsonl"] == outcomes["nest500.jsonl"] == "error"
    assert outcomes["nest500.json"] == "error"
    bad = tmp_path / "saved"
    bad.mkdir()
    (bad / "dataset_dict.json").write_text("{not json")
    assert check_source(bad) == "error"


# --------------------------------------------------------------------------- the instruction parser itself
def assert_valid(messages, reason):
    if messages is None:
        assert reason in REASONS, reason
        return
    assert reason is None
    assert validate_messages(messages) == (messages, None)
    body = [m for m in messages if m["role"] != "system"]
    assert body[0]["role"] == "user" and body[-1]["role"] == "assistant"
    assert all(a["role"] != b["role"] for a, b in zip(body, body[1:]))
    assert all(m["content"].strip() for m in body)


@settings(max_examples=EXAMPLES * 4, deadline=None, derandomize=True)
@given(text=st.one_of(hostile_text(), st.text(max_size=300), st.none()))
def test_parse_conversation_never_crashes(text):
    with time_bound(2):
        assert_valid(*parse_conversation(text))


@settings(max_examples=EXAMPLES * 4, deadline=None, derandomize=True)
@given(value=st.one_of(JSON_VALUE, st.lists(MESSAGE, max_size=6), hostile_text(),
                       st.lists(MESSAGE, max_size=6).map(json.dumps)))
def test_parse_messages_never_crashes(value):
    with time_bound(2):
        assert_valid(*parse_messages(value))


@settings(max_examples=EXAMPLES * 4, deadline=None, derandomize=True)
@given(row=RECORD)
def test_row_to_instruction_never_crashes(row):
    with time_bound(2):
        record, reason = row_to_instruction(row)
        assert_valid(record["messages"] if record else None, reason)


@pytest.mark.parametrize("text,expect", [
    ("User: write a poem", "no_assistant"),                          # "User:" without "Assistant:"
    ("User: a\nUser: b\nAssistant: c", "bad_turn_order"),             # nested / repeated speakers
    ("User: say 'User: hi Assistant: yo'\nAssistant: ok", None),     # a speaker quoted inside a turn
    ("User: a\nAssistant:", "empty_answer"),                          # an empty poem
    ("User:\nAssistant: b", "empty_prompt"),
    ("Assistant: b", "no_roles"),
    ("hello\nUser: a\nAssistant: b", "no_user"),
    ("User: a\nAssistant: b\nUser: c", "no_final_answer"),
    ("User: hi Assistant: hello", None),                              # the one-line pair
    ("User: a\x00b\nAssistant: c\x00", None),
])
def test_speaker_edge_cases(text, expect):
    messages, reason = parse_conversation(text)
    assert reason == expect
    assert_valid(messages, reason)
