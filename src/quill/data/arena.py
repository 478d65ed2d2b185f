"""The blind A/B arena's store: battles and human votes in one SQLite file (stdlib ``sqlite3``), and the votes
as preference pairs (``data.source: arena:PATH.sqlite`` with ``data.kind: preferences``).

Why SQLite: votes are the human feedback the project measures itself by, so they must survive a crash, be
readable with any tool, and need no server. Each operation opens its own short-lived connection, so the
store is safe from the server's worker threads without sharing a connection; a vote is a single
``UPDATE … WHERE vote IS NULL`` inside ``BEGIN IMMEDIATE``, so two people voting on the same battle at once
cannot both win and concurrent votes on different battles are all kept (WAL mode, busy timeout).

This module is the one owner of the schema: ``quill serve`` (``apps/arena.py``, ``apps/arena_api.py``) writes
through :class:`ArenaStore` and tabulates with :func:`results` (the win-rate table), and the data layer reads
votes through :func:`arena_pairs`, the one
function that decides which votes are usable pairs (the data report, ``quill arena results`` and the page's
Results view all count with it). A voted battle becomes ``{"prompt": the battle's prompt (the user's
message), "chosen": the winner's text, "rejected": the loser's}``; the others are dropped and counted by
reason: ``pending`` (no vote yet), ``tie``, ``identical`` (both texts equal once normalised),
``unknown_battle`` (a row without an id), ``unknown_model`` (a side without a model name), ``malformed``
(a vote other than a / b / tie, a prompt or text that is missing, empty or not text).
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections import Counter
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator

from quill.config import DataConfig
from quill.data.clean import text_key
from quill.data.instructions import parse_rows
from quill.data.records import UNSPLIT, SourceResult
from quill.errors import DataError, QuillError

VOTES = ("a", "b", "tie")
DROP_REASONS = ("pending", "tie", "identical", "unknown_battle", "unknown_model", "malformed")

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

    def rows(self) -> list[dict[str, Any]]:
        """Every battle as stored (``sampling`` still JSON text), oldest first."""
        with self._connect() as con:
            return [dict(r) for r in con.execute("SELECT * FROM battles ORDER BY created")]

    def battles(self) -> list[dict[str, Any]]:
        return [{**r, "sampling": json.loads(r["sampling"])} for r in self.rows()]

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


# --------------------------------------------------------------------------- votes -> preference pairs
def vote_to_pair(row: dict) -> tuple[dict | None, str | None]:
    """One stored battle -> (preference row, None) or (None, reason); see the module docstring."""
    vote = row.get("vote")
    if vote is None:
        return None, "pending"
    if vote == "tie":
        return None, "tie"
    if vote not in ("a", "b"):
        return None, "malformed"
    if not _text(row.get("id")):
        return None, "unknown_battle"
    if not (_text(row.get("model_a")) and _text(row.get("model_b"))):
        return None, "unknown_model"
    prompt, out_a, out_b = row.get("prompt"), row.get("output_a"), row.get("output_b")
    if not all(_text(x) for x in (prompt, out_a, out_b)):
        return None, "malformed"
    if text_key(out_a) == text_key(out_b):
        return None, "identical"
    chosen, rejected = (out_a, out_b) if vote == "a" else (out_b, out_a)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, None


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def arena_pairs(rows: list[dict]) -> tuple[list[dict], Counter]:
    """Every stored battle as a pair or a reason: (pairs, dropped by reason)."""
    return parse_rows(rows, vote_to_pair)


def pair_counts(store: ArenaStore) -> dict[str, Any]:
    """``{"usable": N, "dropped": {reason: n}}``: what the page and ``quill arena results`` show."""
    pairs, dropped = arena_pairs(store.rows())
    return {"usable": len(pairs), "dropped": dict(sorted((k, v) for k, v in dropped.items() if v))}


def format_pair_counts(counts: dict[str, Any]) -> str:
    """``usable preference pairs: 3 (tie 2, identical 1)``."""
    why = ", ".join(f"{k} {v}" for k, v in counts["dropped"].items())
    return f"usable preference pairs: {counts['usable']}" + (f" (dropped: {why})" if why else "")


def read_arena(path: Path, data_cfg: DataConfig) -> SourceResult:
    """``source: arena:PATH``: the votes of an arena database as preference rows (dropped ones counted)."""
    if data_cfg.kind != "preferences":
        raise DataError(f"arena:{path}: arena votes are preference pairs; set data.kind: preferences "
                        f"(got {data_cfg.kind})")
    if not path.is_file():
        raise DataError(f"arena:{path}: not a file (quill serve writes the arena database, see --arena-db)")
    try:
        with closing(sqlite3.connect(path, timeout=30)) as con:
            con.row_factory = sqlite3.Row
            rows = [dict(r) for r in con.execute("SELECT * FROM battles")]
    except sqlite3.Error as err:
        raise DataError(f"arena:{path}: not a readable arena database: {err}") from None
    rows.sort(key=lambda r: (r.get("created") if isinstance(r.get("created"), (int, float)) else 0))
    if data_cfg.max_rows is not None:
        rows = rows[:data_cfg.max_rows]
    pairs, dropped = arena_pairs(rows)
    return SourceResult({UNSPLIT: pairs}, dropped, len(rows), f"arena:{path} (sqlite)")
