"""Splits: deterministic, exact fractions, no text in two splits, existing splits kept."""
from __future__ import annotations

from quill.config import SplitConfig
from quill.data.clean import text_key
from quill.data.split import make_splits, overlap, split_records


def key(r):
    return text_key(r["text"])


def poems(n, prefix="poem"):
    return [{"text": f"{prefix} number {i}\nsecond line {i}"} for i in range(n)]


def test_deterministic_and_exact_fractions():
    rows = poems(100)
    a = split_records(rows, SplitConfig(val=0.2, test=0.1, seed=3), key)
    b = split_records(list(reversed(rows)), SplitConfig(val=0.2, test=0.1, seed=3), key)
    assert {k: len(v) for k, v in a.items()} == {"train": 70, "val": 20, "test": 10}
    assert {k: {key(r) for r in v} for k, v in a.items()} == {k: {key(r) for r in v} for k, v in b.items()}
    c = split_records(rows, SplitConfig(val=0.2, test=0.1, seed=4), key)
    assert {key(r) for r in c["val"]} != {key(r) for r in a["val"]}  # the seed matters


def test_adding_rows_moves_few_existing_rows():
    cfg = SplitConfig(val=0.2)
    before = split_records(poems(200), cfg, key)
    after = split_records(poems(220), cfg, key)
    val_before = {key(r) for r in before["val"]}
    val_after = {key(r) for r in after["val"]}
    assert len(val_before - val_after) <= 10  # a permutation would move ~80% of them


def test_source_order_kept_within_a_split():
    rows = poems(30)
    out = split_records(rows, SplitConfig(val=0.3), key)
    positions = [rows.index(r) for r in out["train"]]
    assert positions == sorted(positions)


def test_small_sets_still_get_a_val_row_and_keep_train():
    out = split_records(poems(3), SplitConfig(val=0.05), key)
    assert len(out["val"]) == 1 and len(out["train"]) == 2
    out = split_records(poems(2), SplitConfig(val=0.5, test=0.4), key)
    assert len(out["train"]) >= 1
    assert split_records(poems(1), SplitConfig(val=0.2), key)["train"] == poems(1)


def test_dedupe_before_split_no_overlap():
    rows = poems(50) + [{"text": r["text"].upper() + "!"} for r in poems(10)]
    out, dropped = make_splits({"all": rows}, SplitConfig(val=0.2, test=0.2), key)
    assert dropped == {"duplicate": 10}
    assert overlap(out, key) == 0 and sum(map(len, out.values())) == 50


def test_without_dedupe_duplicates_still_share_a_split():
    rows = poems(40) + poems(40)
    out, dropped = make_splits({"all": rows}, SplitConfig(val=0.25), key, dedupe_rows=False)
    assert not dropped and sum(map(len, out.values())) == 80
    assert overlap(out, key) == 0


def test_existing_splits_kept_and_deduped_across_them():
    source = {"train": poems(20) + poems(3, "shared"), "val": poems(5, "val") + poems(2, "shared"),
              "test": poems(6, "test") + poems(1, "shared")}
    out, dropped = make_splits(source, SplitConfig(val=0.1, test=0.1), key)
    assert dropped == {"duplicate_across_splits": 3}  # val loses shared 0, train loses shared 0 and 1
    assert len(out["test"]) == 7 and len(out["val"]) == 6 and len(out["train"]) == 21
    assert overlap(out, key) == 0


def test_missing_eval_split_is_carved_from_train():
    out, _ = make_splits({"train": poems(90), "test": poems(10, "test")}, SplitConfig(val=0.1, test=0.1), key)
    assert len(out["test"]) == 10 and len(out["val"]) == 10 and len(out["train"]) == 80


def test_keep_existing_false_resplits():
    source = {"train": poems(10), "test": poems(90, "test")}
    out, _ = make_splits(source, SplitConfig(val=0.1, test=0.1, keep_existing=False), key)
    assert {k: len(v) for k, v in out.items()} == {"train": 80, "val": 10, "test": 10}
