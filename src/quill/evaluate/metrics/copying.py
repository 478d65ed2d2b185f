"""Memorisation: the longest word span a sample shares verbatim with the training corpus.

A poet that recites its training poems scores well on rhyme and meter for the wrong reason, so
copying is measured beside them. The index holds a hash of every 8-gram of normalised words
(``phonetics.words``) in the corpus, in one sorted NumPy array: ~8 bytes per corpus word, so a
30k-poem / 10M-word corpus costs ~80 MB and builds in seconds, where a Python set of tuples
would cost gigabytes. N-grams never cross poem boundaries.

The longest copied span is found by chaining: a run of r consecutive sample windows whose 8-grams
are all in the corpus is a span of r + 7 words. Chaining can in principle stitch a span out of two
corpus poems that share a 7-word overlap; that makes the length an upper bound, which is the safe
side for a memorisation alarm. Spans shorter than N report 0: short shared phrases ("the sea is
blue") are language, not copying.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from quill.verse.phonetics import words

COPY_N = 8
_MULT = np.uint64(0x9E3779B97F4A7C15)   # odd 64-bit multiplier (golden ratio); wraps mod 2**64


def _hash_windows(ids: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash of every length-n window of ``ids`` (uint64, wrapping arithmetic)."""
    m = len(ids) - n + 1
    h = np.zeros(max(m, 0), dtype=np.uint64)
    if m <= 0:
        return h
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _MULT + ids[k:k + m].astype(np.uint64) + np.uint64(1)
    return h


class NgramIndex:
    """Hashed n-grams of a corpus of texts, for copy detection (``longest_copy``)."""

    def __init__(self, texts: Iterable[str], n: int = COPY_N):
        self.n = n
        self.vocab: dict[str, int] = {}
        chunks, valid = [], []
        for text in texts:
            w = words(text)
            if len(w) < n:
                continue
            ids = np.fromiter((self.vocab.setdefault(x, len(self.vocab)) for x in w), dtype=np.int64, count=len(w))
            chunks.append(ids)
            v = np.zeros(len(w), dtype=bool)
            v[:len(w) - n + 1] = True       # windows that start here stay inside this poem
            valid.append(v)
        if chunks:
            ids = np.concatenate(chunks)
            ok = np.concatenate(valid)
            h = _hash_windows(ids, n)
            self.hashes = np.unique(h[ok[:len(h)]])
        else:
            self.hashes = np.zeros(0, dtype=np.uint64)
        self.texts = len(chunks)

    def __len__(self) -> int:
        return len(self.hashes)

    def hits(self, text: str) -> np.ndarray:
        """Boolean per window start of ``text``: its n-gram occurs in the corpus."""
        w = words(text)
        if len(w) < self.n or not len(self.hashes):
            return np.zeros(max(len(w) - self.n + 1, 0), dtype=bool)
        ids = np.array([self.vocab.get(x, -1) for x in w], dtype=np.int64)
        unknown = ids < 0
        h = _hash_windows(np.where(unknown, 0, ids), self.n)
        pos = np.searchsorted(self.hashes, h)
        found = (pos < len(self.hashes)) & (self.hashes[np.minimum(pos, len(self.hashes) - 1)] == h)
        # a window with a word the corpus never saw cannot be a copy
        has_unknown = np.convolve(unknown.astype(int), np.ones(self.n, dtype=int), "valid") > 0
        return found & ~has_unknown

    def longest_copy(self, text: str) -> int:
        """Length in words of the longest span shared with the corpus (0 if below n words)."""
        best = run = 0
        for hit in self.hits(text):
            run = run + 1 if hit else 0
            best = max(best, run)
        return best + self.n - 1 if best else 0


def copying(text: str, index: NgramIndex | None) -> dict:
    """``copy_longest`` (words) and ``copied`` (an n-gram of >= index.n words copied); None without an index."""
    if index is None:
        return {"copy_longest": None, "copied": None}
    longest = index.longest_copy(text)
    return {"copy_longest": longest, "copied": longest >= index.n}
