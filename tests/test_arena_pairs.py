"""Arena votes become preference pairs (``data.source: arena:PATH`` with ``data.kind: preferences``): every drop
reason counted in the data report, the same count in ``quill arena results`` and the results endpoint, and votes
cast through the real HTTP API training a tiny dpo stage."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from quill.apps.arena import print_results
from quill.apps.live import serve_in_thread
from quill.apps.server import create_app
from quill.config import load_config
from quill.data.arena import ArenaStore, pair_counts
from quill.data.prepare import prepare_stage_data
from quill.decoding.engine import Engine
from quill.errors import DataError
from quill.train.pipeline import train

TINY_DPO = Path(__file__).parent / "fixtures" / "train" / "tiny-dpo.yaml"
POEM_A, POEM_B = "The sea is grey at dawn,\nthe gulls are crying.", "Night falls on the hill;\nthe owl is calling."


def voted_store(path: Path) -> ArenaStore:
    """Two usable votes (one per side) and one battle for each drop reason, through the store's own API."""
    store = ArenaStore(path)
    vote = lambda prompt, a, b, v, ma="poet", mb="base": store.vote(store.add_battle(prompt, a, b, ma, mb, {}), v)
    vote("A poem about the sea", POEM_A, POEM_B, "a")
    vote("A poem about the night", POEM_A, POEM_B, "b")
    vote("A tie", POEM_A, POEM_B, "tie")
    vote("Another tie", POEM_B, POEM_A, "tie")
    vote("Identical", POEM_A, " the SEA is grey at dawn\n the gulls are crying ", "a")  # equal once normalised
    store.add_battle("Pending", POEM_A, POEM_B, "poet", "base", {})
    vote("No model", POEM_A, POEM_B, "a", mb="")
    vote("", POEM_A, POEM_B, "b")  # an empty prompt
    with sqlite3.connect(path) as con:  # what a hand-edited or foreign database may hold
        con.execute("PRAGMA ignore_check_constraints = 1")
        con.execute("INSERT INTO battles VALUES (NULL, 1, 'p', 'x', 'y', 'poet', 'base', '{}', 'a', 1)")
        con.execute("INSERT INTO battles VALUES ('bad', 2, 'p', 'x', 'y', 'poet', 'base', '{}', 'c', 1)")
    return store


EXPECTED_DROPS = {"tie": 2, "identical": 1, "pending": 1, "unknown_model": 1, "malformed": 2, "unknown_battle": 1}


def dpo_stage(source: str, stage: str = "dpo"):
    cfg = load_config(TINY_DPO, [f"stages.{stage}.data.source={source}", f"stages.{stage}.data.split.val=0"])
    return cfg.stage(stage)


def test_votes_become_pairs_and_every_drop_is_counted(tmp_path):
    db = tmp_path / "arena.sqlite"
    voted_store(db)
    data = prepare_stage_data(dpo_stage(f"arena:{db}"))
    pairs = data.splits["train"]
    assert sorted((p["prompt"][0]["content"], p["chosen"], p["rejected"]) for p in pairs) == [
        ("A poem about the night", POEM_B, POEM_A), ("A poem about the sea", POEM_A, POEM_B)]
    assert all(p["prompt"] == [{"role": "user", "content": p["prompt"][0]["content"]}] for p in pairs)
    report = data.report
    assert report["dropped"] == EXPECTED_DROPS
    assert report["rows_in"] == report["rows_out"] + sum(report["dropped"].values()) == 10
    assert report["source"] == f"arena:{db} (sqlite)"


def test_arena_results_say_how_many_pairs(tmp_path, capsys):
    db = tmp_path / "arena.sqlite"
    store = voted_store(db)
    assert pair_counts(store) == {"usable": 2, "dropped": dict(sorted(EXPECTED_DROPS.items()))}
    assert print_results(db) == 0
    out = capsys.readouterr().out
    assert "usable preference pairs: 2 (dropped: identical 1, malformed 2, pending 1, tie 2, unknown_battle 1, " \
           "unknown_model 1)" in out


def test_bad_arena_sources_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="not a file"):
        prepare_stage_data(dpo_stage(f"arena:{tmp_path / 'missing.sqlite'}"))
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(DataError, match="junk.sqlite: not a readable arena database"):
        prepare_stage_data(dpo_stage(f"arena:{junk}"))
    voted_store(tmp_path / "ok.sqlite")
    with pytest.raises(DataError, match="set data.kind: preferences"):
        prepare_stage_data(dpo_stage(f"arena:{tmp_path / 'ok.sqlite'}", stage="sft"))
    empty = ArenaStore(tmp_path / "empty.sqlite").path
    with pytest.raises(DataError, match="no usable rows"):
        prepare_stage_data(dpo_stage(f"arena:{empty}"))


@pytest.mark.slow
def test_votes_through_http_train_a_dpo_stage(tiny_llama, tiny_gpt2, tmp_path):
    gen = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 24, "seed": 0}
    engines = {name: Engine(*fixture, name=name, context_length=512, generation=gen, fast=False)
               for name, fixture in (("poet", tiny_llama), ("base", tiny_gpt2))}
    db = tmp_path / "arena.sqlite"
    with serve_in_thread(create_app(engines, arena_db=db)) as url:
        votes = ["a", "b", "a", "b", "a", "b", "a", "tie"]
        for i, vote in enumerate(votes):
            battle = httpx.post(url + "/arena/battle", json={"prompt": f"A poem about the sea, number {i}",
                                                               "max_tokens": 24}, timeout=60).json()
            voted = httpx.post(url + "/arena/vote", json={"id": battle["id"], "vote": vote}, timeout=60)
            assert voted.status_code == 200
        assert httpx.post(url + "/arena/vote", json={"id": "missing", "vote": "a"}, timeout=60).status_code == 404
        counts = httpx.get(url + "/arena/results", timeout=60).json()["pairs"]
    assert counts == pair_counts(ArenaStore(db))
    assert counts["dropped"].get("tie") == 1 and counts["usable"] + sum(counts["dropped"].values()) == len(votes)
    assert counts["usable"] >= 4, counts  # tiny random models: an empty answer is 'malformed', counted

    cfg = load_config(TINY_DPO, [f"stages.dpo.data.source=arena:{db}", "stages.dpo.data.split.val=0"])
    run = tmp_path / "run"
    train(cfg, run, base_dir=TINY_DPO.parent)
    report = json.loads((run / "data/dpo/report.json").read_text())
    assert report["source"].startswith("arena:") and report["dropped"]["tie"] == 1
    assert report["rows_out"] == counts["usable"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["stages"]["dpo"]["steps"] == 3
