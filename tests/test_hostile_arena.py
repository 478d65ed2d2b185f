"""Arena integrity across PROCESSES (the thread case is in test_generate_arena.py): several server processes
(or a server and `quill arena results`) on one SQLite file lose no vote, and a battle is won by one vote only."""
from __future__ import annotations

import multiprocessing as mp
import sqlite3

from quill.data.arena import ArenaError, ArenaStore


def _voter(path: str, ids: list[str], contested: str, k: int, n: int, out) -> None:
    store = ArenaStore(path)
    for i, bid in enumerate(ids):
        if i % n == k:
            store.vote(bid, "ab"[i % 2] if i % 3 else "tie")
    try:
        store.vote(contested, "a")
        out.put("won")
    except ArenaError as err:
        out.put(str(err.status))


def test_voters_in_separate_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "arena.sqlite")
    store = ArenaStore(path)
    ids = [store.add_battle(f"p{i}", "x", "y", "m1", "m2", {}) for i in range(60)]
    contested = store.add_battle("c", "x", "y", "m1", "m2", {})
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_voter, args=(path, ids, contested, k, 4, out)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    outcomes = sorted(out.get(timeout=5) for _ in procs)
    assert outcomes == ["409", "409", "409", "won"]
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT COUNT(*) FROM battles WHERE vote IS NULL").fetchone()[0] == 0
    rows = store.results()
    assert sum(r["battles"] for r in rows) == 61 and sum(r["pending"] for r in rows) == 0


def test_unknown_and_replayed_votes_are_rejected(tmp_path):
    store = ArenaStore(tmp_path / "arena.sqlite")
    bid = store.add_battle("p", "x", "y", "m1", "m2", {})
    for bad_id in ("nope", "", "' OR 1=1 --", bid + "0"):
        try:
            store.vote(bad_id, "a")
            raise AssertionError(f"vote for {bad_id!r} accepted")
        except ArenaError as err:
            assert err.status == 404
    store.vote(bid, "b")
    try:
        store.vote(bid, "a")
        raise AssertionError("second vote accepted")
    except ArenaError as err:
        assert err.status == 409
    assert store.get(bid)["vote"] == "b"  # the first vote stands
