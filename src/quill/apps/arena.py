"""The arena's results: the win-rate table and how many usable preference pairs the votes make.

The store itself (schema, connections, votes) is :mod:`quill.data.arena`, the one owner of the schema, so
training can read the votes as pairs (``data.source: arena:PATH``) without importing the server.

``data.arena.results`` is the one function that computes the win-rate table: the web *Results* view and
``quill arena results DB`` (:func:`print_results`) both print its rows, so they always agree; both show
``data.arena.pair_counts`` too, the count the data reader makes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from quill.data.arena import ArenaError, ArenaStore, format_pair_counts, pair_counts, results


def format_results(rows: list[dict[str, Any]]) -> str:
    """The results table as plain text (what ``quill arena results`` prints)."""
    if not rows:
        return "no battles yet"
    head = ["model 1", "model 2", "battles", "wins 1", "wins 2", "ties", "win rate 1", "win rate 2", "pending"]
    body = [[r["model_1"], r["model_2"], str(r["battles"]), str(r["wins_1"]), str(r["wins_2"]), str(r["ties"]),
             _pct(r["win_rate_1"]), _pct(r["win_rate_2"]), str(r["pending"])] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("win rate = (wins + ties/2) / voted battles")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_results(db: str | Path) -> int:
    """``quill arena results DB``: the same table as the web page's Results view."""
    path = Path(db)
    if not path.is_file():
        raise ArenaError(f"{path}: no arena database here (quill serve writes it, see --arena-db)")
    store = ArenaStore(path)
    print(format_results(results(store)))
    print(format_pair_counts(pair_counts(store)))
    return 0
