"""What every reader returns: :class:`SourceResult`, and the shared helpers that build one.

A leaf of the data readers: ``sources.py`` (files, the entry point), ``hub.py`` (Hugging Face data sets) and
``gutenberg.py`` (the offline corpus) all import it, and it imports none of them, so the entry point can import
the readers without an import cycle.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from quill.config import DataConfig
from quill.data.columns import map_columns, project

UNSPLIT = "all"  # the key of SourceResult.splits when the source has no splits of its own
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}


@dataclass
class SourceResult:
    """Rows from one source. ``splits`` is ``{"all": rows}`` unless the source has its own splits."""
    splits: dict[str, list[dict]]
    skipped: Counter = field(default_factory=Counter)  # reader-level skips by reason (e.g. empty_file)
    rows_read: int = 0          # rows seen, skipped ones included: the report's rows_in
    origin: str = ""            # what was read, for the report ("file.csv (csv)", "hub:owner/name")

    @property
    def presplit(self) -> bool:
        return set(self.splits) != {UNSPLIT}

    @property
    def rows(self) -> list[dict]:
        return [row for rows in self.splits.values() for row in rows]


def from_split_records(splits: dict[str, list[dict]], data_cfg: DataConfig, where: str, origin: str,
                       skipped: Counter | None = None) -> SourceResult:
    """Map columns for a source that already has splits (hub DatasetDict, JSON ``{split: rows}``)."""
    skipped = skipped if skipped is not None else Counter()
    columns = sorted({c for rows in splits.values() for c in columns_of(rows)})
    mapping = map_columns(columns, data_cfg, where)
    out: dict[str, list[dict]] = {}
    for name, records in splits.items():
        key = SPLIT_NAMES.get(name.lower(), "train")  # an unknown split name joins train rather than vanish
        out.setdefault(key, []).extend(project(rec, mapping) for rec in records)
    n = sum(len(r) for r in out.values()) + sum(skipped.values())
    return SourceResult(out, skipped, n, origin)


def columns_of(records: list[dict]) -> list[str]:
    """Column names in first-seen order (JSON rows may differ in their keys)."""
    seen: dict[str, None] = {}
    for rec in records[:1000]:
        seen.update(dict.fromkeys(rec))
    return list(seen)


def one_line(err: BaseException) -> str:
    """An exception's message on one line, for a one-line DataError."""
    return re.sub(r"\s+", " ", str(err)).strip()
