"""The arena's SQLite store: votes taken once, nothing lost under concurrent voters, one results table."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from quill.apps.arena import format_results
from quill.data.arena import ArenaError, ArenaStore, results
from quill.cli import main


def battle(store, a="poet", b="base"):
    return store.add_battle("The sea", "poem A", "poem B", a, b, {"temperature": 0.7})


def test_vote_once_then_409_and_unknown_404(tmp_path):
    store = ArenaStore(tmp_path / "sub" / "arena.sqlite")
    bid = battle(store)
    assert store.get(bid)["vote"] is None
    row = store.vote(bid, "b")
    assert (row["vote"], row["model_a"], row["model_b"]) == ("b", "poet", "base") and row["voted"] >= row["created"]
    with pytest.raises(ArenaError) as err:
        store.vote(bid, "a")
    assert err.value.status == 409 and store.get(bid)["vote"] == "b"
    with pytest.raises(ArenaError) as err:
        store.vote("nope", "a")
    assert err.value.status == 404
    with pytest.raises(ArenaError) as err:
        store.vote(bid, "both")
    assert err.value.status == 400


def test_concurrent_voters_lose_nothing(tmp_path):
    store = ArenaStore(tmp_path / "arena.sqlite")
    ids = [battle(store) for _ in range(40)]
    contested = battle(store)
    outcomes: list[str] = []
    lock = threading.Lock()

    def voter(k):
        for i, bid in enumerate(ids):
            if i % 8 == k:
                store.vote(bid, "a" if i % 3 else "tie")
        try:
            store.vote(contested, "b")
            result = "won"
        except ArenaError as err:
            result = str(err.status)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=voter, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["409"] * 7 + ["won"]
    with sqlite3.connect(tmp_path / "arena.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM battles WHERE vote IS NULL").fetchone()[0] == 0


def test_results_fold_positions_and_count_ties_half(tmp_path):
    store = ArenaStore(tmp_path / "arena.sqlite")
    store.vote(battle(store, "poet", "base"), "a")  # poet wins
    store.vote(battle(store, "base", "poet"), "b")  # poet wins (shown as B)
    store.vote(battle(store, "base", "poet"), "a")  # base wins
    store.vote(battle(store, "poet", "base"), "tie")
    battle(store, "poet", "base")  # pending
    store.vote(battle(store, "x", "y"), "b")
    rows = results(store)
    assert rows[0] == {"model_1": "base", "model_2": "poet", "battles": 4, "wins_1": 1, "wins_2": 2, "ties": 1,
                       "pending": 1, "win_rate_1": 0.375, "win_rate_2": 0.625}
    assert rows[1]["wins_2"] == 1 and rows[1]["win_rate_2"] == 1.0
    text = format_results(rows)
    assert "62.5%" in text and "37.5%" in text


def test_quill_arena_results_prints_the_table(tmp_path, capsys):
    store = ArenaStore(tmp_path / "arena.sqlite")
    store.vote(battle(store), "a")
    assert main(["arena", "results", str(tmp_path / "arena.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "poet" in out and "100.0%" in out and "battles" in out
    assert main(["arena", "results", str(tmp_path / "missing.sqlite")]) == 2
