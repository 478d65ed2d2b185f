"""Synthesized instruction pairs: deterministic, honest about which kinds apply, answer = the poem."""
from __future__ import annotations

from pathlib import Path

from quill.config import CleanConfig, DataConfig, SynthConfig
from quill.data.clean import clean_poems
from quill.data.sources import read_source
from quill.data.synthesize import detect_form, pairs_for_poem, salient_topic, synthesize

FIX = Path(__file__).parent / "fixtures" / "data"


def fixture_poems():
    rows = read_source(DataConfig(source=str(FIX / "poems.jsonl")), None).rows
    return clean_poems(rows, CleanConfig()).records


def test_deterministic_and_order_independent():
    poems = fixture_poems()
    cfg = SynthConfig(per_poem=3, seed=7)
    a, kinds_a = synthesize(poems, cfg)
    b, _ = synthesize(list(reversed(poems)), cfg)
    assert a == synthesize(poems, cfg)[0]
    assert sorted(map(str, a)) == sorted(map(str, b))
    assert synthesize(poems, SynthConfig(per_poem=3, seed=8))[0] != a
    assert sum(kinds_a.values()) == len(a)


def test_every_kind_appears_and_answers_are_the_poem():
    poems = fixture_poems()
    records, kinds = synthesize(poems, SynthConfig(per_poem=6))
    assert set(kinds) == {"topic", "style", "title", "continue", "lines", "form"}
    texts = {p["text"] for p in poems}
    for rec in records:
        user, answer = rec["messages"]
        assert user["role"] == "user" and answer["role"] == "assistant" and user["content"] and answer["content"]
        if not user["content"].startswith(("Continue", "Here is the start")):
            assert answer["content"] in texts
        else:  # continuation: prompt opening + answer rebuild the poem
            opening = user["content"].split("\n", 1)[1]
            assert any(t.startswith(opening) and t.endswith(answer["content"]) for t in texts)


def test_per_poem_and_kinds_respected():
    poems = fixture_poems()
    records, kinds = synthesize(poems, SynthConfig(per_poem=1, kinds=["style"]))
    assert set(kinds) == {"style"} and len(records) == len(poems)  # every fixture poem has an author
    assert all("in the style of" in r["messages"][0]["content"] or "would" in r["messages"][0]["content"]
               for r in records)
    records, _ = synthesize(poems, SynthConfig(per_poem=2))
    assert len(records) == 2 * len(poems)


def test_kinds_only_when_they_apply():
    bare = {"text": "one line only about the sea and the sea", "title": None, "author": None, "tags": []}
    kinds = [k for k, _ in pairs_for_poem(bare, SynthConfig(per_poem=8))]
    assert "style" not in kinds and "title" not in kinds and "continue" not in kinds and "topic" in kinds


def test_forms():
    assert detect_form("\n".join(f"line {i}" for i in range(14))) == "sonnet"
    assert detect_form("An old silent pond\nA frog jumps into the pond\nSplash! Silence again.") == "haiku"
    assert detect_form("a\nb\nc\nd") == "quatrain"
    assert detect_form("a\nb\n\nc\nd\n\ne\nf") == "poem in couplets"
    assert detect_form("a\nb\nc\nd\ne") is None


def test_salient_topic_from_text_alone():
    text = "The sea is grey, the sea is cold,\nthe gulls cry over the sea of old."
    assert salient_topic(text) == "the sea"
    assert salient_topic("and the of") is None


def test_title_prompt_drops_trailing_period():
    poem = {"text": "a\nb\nc\nd\ne", "title": "Inconstancy.", "author": None, "tags": []}
    (_, record), = pairs_for_poem(poem, SynthConfig(per_poem=1, kinds=["title"]))
    assert '"Inconstancy"' in record["messages"][0]["content"]
