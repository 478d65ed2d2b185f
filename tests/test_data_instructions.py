"""The instruction parser: User/Assistant strings, prompt/completion and messages, with skip reasons."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from quill.config import DataConfig
from quill.data.instructions import parse_conversation, parse_messages, rows_to_instructions
from quill.data.sources import read_source

FIX = Path(__file__).parent / "fixtures" / "data"


def user(c):
    return {"role": "user", "content": c}


def bot(c):
    return {"role": "assistant", "content": c}


def test_single_line():
    msgs, reason = parse_conversation("User: Write about rain. Assistant: Rain falls.")
    assert reason is None and msgs == [user("Write about rain."), bot("Rain falls.")]


def test_multi_line_answer_keeps_blank_lines():
    text = "User: Write a poem.\nAssistant: Sure, here's a poem:\nTitle\n\nline one\nline two"
    msgs, _ = parse_conversation(text)
    assert msgs == [user("Write a poem."), bot("Sure, here's a poem:\nTitle\n\nline one\nline two")]


def test_multi_turn_and_multi_line_prompt():
    text = "User: one\nAssistant: a\nUser: two,\nstill two\nAssistant: b\nb2"
    msgs, _ = parse_conversation(text)
    assert msgs == [user("one"), bot("a"), user("two,\nstill two"), bot("b\nb2")]


def test_system_and_human_markers():
    msgs, _ = parse_conversation("System: be brief\nHuman: hi\nAssistant: hello")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]


@pytest.mark.parametrize("text, reason", [
    ("User: no answer here", "no_assistant"),
    ("User:\nAssistant: answer", "empty_prompt"),
    ("User:", "empty_prompt"),
    ("User: question\nAssistant:   ", "empty_answer"),
    ("no roles at all", "no_roles"),
    ("", "no_roles"),
    ("preamble\nUser: q\nAssistant: a", "no_user"),
    ("User: q\nUser: q2\nAssistant: a", "bad_turn_order"),
    ("User: q\nAssistant: a\nUser: more?", "no_final_answer"),
])
def test_invalid_conversations_have_reasons(text, reason):
    assert parse_conversation(text) == (None, reason)


def test_messages_lists_json_strings_and_sharegpt():
    ok, _ = parse_messages([user("q"), bot("a")])
    assert ok == [user("q"), bot("a")]
    assert parse_messages(json.dumps([user("q"), bot("a")]))[0] == ok
    assert parse_messages([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}])[0] == ok
    assert parse_messages("not json") == (None, "bad_messages")
    assert parse_messages([{"role": "wizard", "content": "x"}]) == (None, "bad_messages")
    assert parse_messages([user("q")]) == (None, "no_assistant")


def test_fixture_files_parse_with_counted_skips():
    rows = read_source(DataConfig(source=str(FIX / "instructions.jsonl"), kind="instructions"), None).rows
    records, skipped = rows_to_instructions(rows)
    assert len(records) == 4 and skipped == {"no_assistant": 1, "empty_prompt": 1, "empty_answer": 1, "no_roles": 1}
    assert records[0]["title"] == "The Sea" and records[0]["author"] == "A"
    assert len(records[2]["messages"]) == 4

    rows = read_source(DataConfig(source=str(FIX / "messages.jsonl"), kind="instructions"), None).rows
    records, skipped = rows_to_instructions(rows)
    assert len(records) == 3 and skipped == {"bad_messages": 1, "no_assistant": 1}
    assert records[0]["messages"][0]["role"] == "system"

    rows = read_source(DataConfig(source=str(FIX / "prompt_completion.jsonl"), kind="instructions"), None).rows
    records, skipped = rows_to_instructions(rows)
    assert len(records) == 2 and skipped == {"empty_prompt": 1}
    assert records[0]["messages"][1]["content"].startswith("White frost")
