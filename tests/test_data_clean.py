"""Cleaning keeps the poem's shape (lines, stanzas, indentation) and removes only padding and control strings."""
from __future__ import annotations

from pathlib import Path

from quill.config import CleanConfig, DataConfig, SplitConfig
from quill.data.clean import (clean_instructions, clean_poems, normalise_field, normalise_text, parse_tags,
                              strip_special, text_key)
from quill.data.sources import read_source
from quill.data.split import make_splits

FIX = Path(__file__).parent / "fixtures" / "data"


def test_line_endings_all_become_newlines():
    assert normalise_text("a\r\r\nb\r\nc\rd\r\r\r\ne") == "a\nb\nc\nd\ne"


def test_padding_removed_breaks_kept():
    text = "\r\r\n\r\r\n  \r\r\nline one   \r\r\n     indented\u00a0\r\r\n \r\r\nstanza two\r\r\n\r\r\n\r\r\n\r\r\nthree\r\r\n"
    assert normalise_text(text) == "line one\n     indented\n\nstanza two\n\nthree"


def test_common_indentation_removed_but_relative_kept():
    assert normalise_text("    a\n      b\n    c") == "a\n  b\nc"


def test_fields_are_one_line():
    assert normalise_field("\r\r\n                    The New Church\r\r\n                ") == "The New Church"
    assert normalise_field("   ") is None
    assert normalise_field("Aleida\u00a0 Rodríguez") == "Aleida Rodríguez"


def test_tags_from_strings_and_lists():
    assert parse_tags("Living,Marriage & Companionship, Love") == ["Living", "Marriage & Companionship", "Love"]
    assert parse_tags('["a", "b", "a"]') == ["a", "b"]
    assert parse_tags(["x", None, " y "]) == ["x", "y"]
    assert parse_tags(None) == []


def test_special_tokens_removed_and_counted():
    text, n = strip_special("a <|endoftext|> b<|im_end|><|im_start|>c <|endfpoem|> [INST] </s>")
    assert n == 6 and "<|" not in text and "INST" not in text
    assert strip_special("no tokens < here") == ("no tokens < here", 0)


def test_pf_messy_csv_end_to_end_clean():
    rows = read_source(DataConfig(source=str(FIX / "pf_messy.csv")), None).rows
    result = clean_poems(rows, CleanConfig())
    assert result.dropped == {"empty_text": 1}
    first = result.records[0]
    assert first["title"] == "Objects Used to Prop Open a Window" and first["author"] == "Michelle Menting"
    assert first["tags"] == []
    assert first["text"].split("\n")[2] == "     because this window is loose\u2014lacks"  # indentation kept
    assert "\n\nBungee cord" in first["text"]  # the " " line is a stanza break
    assert not any(line != line.rstrip() for r in result.records for line in r["text"].split("\n"))
    assert "\r" not in "".join(r["text"] + (r["title"] or "") for r in result.records)
    history = next(r for r in result.records if r["title"] == "History")
    assert history["text"].split("\n")[1].startswith("poppy.")  # \r\r\r\n is one line break


def test_duplicates_dropped_and_counted_by_normalised_key():
    rows = read_source(DataConfig(source=str(FIX / "pf_messy.csv")), None).rows
    records = clean_poems(rows, CleanConfig()).records
    splits, dropped = make_splits({"all": records}, SplitConfig(val=0.2), lambda r: text_key(r["text"]))
    assert dropped == {"duplicate": 1}  # "Look for Me" twice, differing only in blank lines
    assert sum(len(v) for v in splits.values()) == 4


def test_text_key_ignores_case_punctuation_spacing():
    assert text_key("The Sea,  the SEA!\n\u2014 and \u201cwaves\u201d") == text_key("the sea the sea and waves")


def test_min_max_chars():
    rows = [{"text": "short"}, {"text": "x" * 50}, {"text": "y" * 500}]
    result = clean_poems(rows, CleanConfig(min_chars=10, max_chars=100))
    assert [len(r["text"]) for r in result.records] == [50]
    assert result.dropped == {"too_short": 1, "too_long": 1}


def test_special_tokens_in_poems_and_titles_counted_and_optional():
    rows = read_source(DataConfig(source=str(FIX / "poems.jsonl")), None).rows
    result = clean_poems(rows, CleanConfig())
    assert result.special_tokens_removed == 4  # endoftext, im_end (title), im_start, endfpoem
    tokens = next(r for r in result.records if r["author"] == "A. Poet")
    assert tokens["title"] == "Tokens" and "<|" not in tokens["text"]
    kept = clean_poems(rows, CleanConfig(strip_special_tokens=False))
    assert kept.special_tokens_removed == 0
    assert any("<|endoftext|>" in r["text"] for r in kept.records)


def test_clean_instructions_empty_parts_and_tokens():
    records = [{"messages": [{"role": "user", "content": "Q <|im_end|>"}, {"role": "assistant", "content": "A\r\n"}]},
               {"messages": [{"role": "user", "content": "<|endoftext|>"}, {"role": "assistant", "content": "A"}]},
               {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": " \n "}]}]
    result = clean_instructions(records, CleanConfig())
    assert result.records == [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}]
    assert result.dropped == {"empty_prompt": 1, "empty_answer": 1}
    assert result.special_tokens_removed == 2
