"""The blind A/B arena's store: battles and human votes in one SQLite file (stdlib ``sqlite3``).

Why SQLite: votes are the human feedback the project measures itself by, so they must survive a crash, be
readable with any tool, and need no server. Each operation opens its own short-lived connection, so the
store is safe from the server's worker threads without sharing a connection; a vote is a single
``UPDATE … WHERE vote IS NULL`` inside ``BEGIN IMMEDIATE``, so two people voting on the same battle at once
cannot both win and concurrent votes on different battles are all kept (WAL mode, busy timeout).

``results`` is the one function that computes the win-rate table: the web *Results* view and
``quill arena results DB`` both print its rows, so they always agree.
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from quill.errors import QuillError

VOTES = ("a", "b", "tie")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS battles (
    id        TEXT PRIMARY KEY,
    created   REAL NOT NULL,           -- unix time the battle was generated
    prompt    TEXT NOT NULL,
    output_a  TEXT NOT NULL,
    output_b  TEXT NOT NULL,
    model_a   TEXT NOT NULL,           -- the model shown as A (order shuffled by the server)
    model_b   TEXT NOT NULL,
    sampling  TEXT NOT NULL,           -- JSON of the sampling settings used for both outputs
    vote      TEXT CHECK (vote IN ('a', 'b', 'tie')),   -- NULL while pending
    voted     REAL                     -- unix time of the vote
);
CREATE INDEX IF NOT EXISTS battles_vote ON battles (vote);
"""


class ArenaError(QuillError):
    """A vote that cannot be taken; ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class ArenaStore:
    """Battles and votes in the SQLite file ``path`` (created with its folder on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # explicit transactions only
        con.row_factory = sqlite3.Row
        try:
            yield con
        finally:
            con.close()

    def add_battle(self, prompt: str, output_a: str, output_b: str, model_a: str, model_b: str,
                   sampling: dict[str, Any]) -> str:
        """Store a pending battle and return its id (random, so ids cannot be guessed or enumerated)."""
        battle_id = uuid.uuid4().hex
        with self._connect() as con:
            con.execute("INSERT INTO battles (id, created, prompt, output_a, output_b, model_a, model_b, sampling) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (battle_id, time.time(), prompt, output_a, output_b, model_a, model_b,
                         json.dumps(sampling, sort_keys=True)))
        return battle_id

    def vote(self, battle_id: str, vote: str) -> dict[str, Any]:
        """Record ``vote`` ('a', 'b' or 'tie') once; returns the battle with the model names revealed.
        Unknown battle -> ArenaError(404); already voted -> ArenaError(409)."""
        if vote not in VOTES:
            raise ArenaError(f"vote must be one of {', '.join(VOTES)}, got {vote!r}", 400)
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                cur = con.execute("UPDATE battles SET vote = ?, voted = ? WHERE id = ? AND vote IS NULL",
                                  (vote, time.time(), battle_id))
                row = con.execute("SELECT * FROM battles WHERE id = ?", (battle_id,)).fetchone()
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        if row is None:
            raise ArenaError(f"no battle with id {battle_id!r}", 404)
        if cur.rowcount == 0:
            raise ArenaError(f"battle {battle_id} already has a vote ({row['vote']})", 409)
        return _battle_dict(row)

    def get(self, battle_id: str) -> dict[str, Any] | None:
        with self._connect() as con:
            row = con.execute("SELECT * FROM battles WHERE id = ?", (battle_id,)).fetchone()
        return _battle_dict(row) if row else None

    def battles(self) -> list[dict[str, Any]]:
        with self._connect() as con:
            return [_battle_dict(r) for r in con.execute("SELECT * FROM battles ORDER BY created")]

    def results(self) -> list[dict[str, Any]]:
        return results(self)


def _battle_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["sampling"] = json.loads(d["sampling"])
    return d


def results(store: ArenaStore | str | Path) -> list[dict[str, Any]]:
    """Win rates per unordered pair of models over the voted battles (pending ones are counted apart).

    Each row: ``model_1``, ``model_2`` (alphabetical), ``battles`` (voted), ``wins_1``, ``wins_2``, ``ties``,
    ``pending``, ``win_rate_1`` / ``win_rate_2`` = (wins + ties / 2) / battles (a tie is half a win to
    each, so the two rates add up to 1), None when no vote yet. A/B positions are folded away here:
    the page shuffled them, so who sat on which side is not part of the result."""
    store = store if isinstance(store, ArenaStore) else ArenaStore(store)
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for b in store.battles():
        m1, m2 = sorted((b["model_a"], b["model_b"]))
        row = table.setdefault((m1, m2), {"model_1": m1, "model_2": m2, "battles": 0, "wins_1": 0, "wins_2": 0,
                                          "ties": 0, "pending": 0})
        if b["vote"] is None:
            row["pending"] += 1
            continue
        row["battles"] += 1
        if b["vote"] == "tie":
            row["ties"] += 1
        else:
            winner = b["model_a"] if b["vote"] == "a" else b["model_b"]
            row["wins_1" if winner == m1 and m1 != m2 or (m1 == m2 and b["vote"] == "a") else "wins_2"] += 1
    out = []
    for row in sorted(table.values(), key=lambda r: (-r["battles"], r["model_1"], r["model_2"])):
        n = row["battles"]
        row["win_rate_1"] = round((row["wins_1"] + row["ties"] / 2) / n, 4) if n else None
        row["win_rate_2"] = round((row["wins_2"] + row["ties"] / 2) / n, 4) if n else None
        out.append(row)
    return out


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
    print(format_results(results(path)))
    return 0
