"""Deterministic train/val/test splits with no text in two splits.

How rows are assigned: each distinct duplicate key gets a rank = SHA-1 of ``"{seed}:{key}"``; keys are
sorted by rank and the first ``round(n*test)`` go to test, the next ``round(n*val)`` to val, the rest to
train. Why a hash of the text rather than a seeded permutation of positions:
- the split of a poem depends only on its text and the seed, not on row order or on the other rows,
  so adding rows to a corpus moves only the few rows at the cut points (a permutation reshuffles all);
- identical keys rank together, so duplicates (if ``dedupe`` is off) still land in the same split;
- the sizes are exact (``round``), not binomial: a 20-row fixture with ``val: 0.2`` has 4 val rows
  (exact in *groups* when a group key keeps several rows together, see :func:`make_splits`).
A split asked for with a fraction > 0 gets at least one row when there are at least two keys.
Within a split, rows keep their source order (training shuffles; reports stay readable).

Data sets that come with splits (``keep_existing``) keep them; missing val/test splits asked for are
carved out of train the same way. Duplicates are removed across splits too, keeping the copy in the
evaluation split (test, then val) so a published test set stays intact and train never contains it.

Across stages (:func:`hold_out_across`): when two stages read the same poems (the demo's two Gutenberg
stages, one folder given to both), each stage's split alone would let stage 2 train on stage 1's val
poems. So a train row that shares a poem line (or the whole poem) with a val/test row of *another*
stage moves to that evaluation split in its own stage (to the other one if its stage has no such split,
out of the stage if it has neither), repeated until nothing moves: one held-out set for the whole run.
Passages of different sizes are compared by their lines, so an 8-line and a 6-line passage that
overlap are caught.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Callable

from quill.config import SplitConfig

SPLITS = ("train", "val", "test")
Key = Callable[[dict], str]


def rank(key: str, seed: int) -> int:
    """The record's place in the split order: stable across runs and machines (not Python's ``hash``)."""
    return int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:8], "big")


def dedupe(records: list[dict], key: Key, seen: set[str] | None = None) -> tuple[list[dict], int]:
    """Keep the first record of each key (and none whose key is already in ``seen``); returns (kept, dropped)."""
    kept, n = _dedupe([(key(r), r) for r in records], set() if seen is None else seen)
    return [r for _, r in kept], n


def split_records(records: list[dict], cfg: SplitConfig, key: Key, group: Key | None = None
                  ) -> dict[str, list[dict]]:
    """One list of records -> {"train", "val", "test"} (empty splits included) by hashed key order."""
    return _split([(key(r), r) for r in records], cfg, group)


def make_splits(source: dict[str, list[dict]], cfg: SplitConfig, key: Key, dedupe_rows: bool = True,
                unsplit: str = "all", group: Key | None = None) -> tuple[dict[str, list[dict]], Counter]:
    """Dedupe, then split: the one function prepare.py calls. Returns (splits, dropped by reason).

    ``source`` is ``{"all": rows}`` for an unsplit source, else the source's own splits.
    ``key`` decides what is a duplicate; ``group`` (default: ``key``) what must stay together in one
    split: instruction pairs are deduplicated by prompt + answer but grouped by the poem they answer
    with, so two prompts for one poem cannot put that poem in train and in test.
    Each record's key is computed once (it is the costly part on a 50 M-character corpus).
    """
    dropped: Counter = Counter()
    keyed = {name: [(key(r), r) for r in rows] for name, rows in source.items()}
    if set(source) == {unsplit} or not cfg.keep_existing:
        pairs = [p for name in sorted(keyed, key=_eval_first) for p in keyed[name]]
        if dedupe_rows:
            pairs, dropped["duplicate"] = _dedupe(pairs, set())
        return _split(pairs, cfg, group), +dropped

    out: dict[str, list[tuple[str, dict]]] = {name: [] for name in SPLITS}
    seen: set[str] = set()
    for name in sorted(keyed, key=_eval_first):  # test, val, then train: eval splits keep shared rows
        pairs = keyed[name]
        if dedupe_rows:
            pairs, n_within = _dedupe(pairs, set())
            dropped["duplicate"] += n_within
            before = len(pairs)
            pairs = [p for p in pairs if p[0] not in seen]
            dropped["duplicate_across_splits"] += before - len(pairs)
            seen.update(k for k, _ in pairs)
        out.setdefault(name, []).extend(pairs)
    carve = {name: frac for name, frac in (("val", cfg.val), ("test", cfg.test)) if frac > 0 and not out[name]}
    if carve and out["train"]:
        total = sum(len(v) for v in out.values())
        # the fraction is of the whole data set, so carve a correspondingly larger share of train
        fractions = {name: frac * total / len(out["train"]) for name, frac in carve.items()}
        scale = min(1.0, 0.9 / sum(fractions.values()))  # keep most of train if it is nearly all eval
        sub = _split(out["train"], SplitConfig(val=fractions.get("val", 0.0) * scale,
                                               test=fractions.get("test", 0.0) * scale, seed=cfg.seed), group)
        return {name: sub[name] if name in carve or name == "train" else [r for _, r in out[name]]
                for name in SPLITS}, +dropped
    return {name: [r for _, r in pairs] for name, pairs in out.items()}, +dropped


def hold_out_across(stage_splits: list[dict[str, list[dict]]], keys: list[Callable[[dict], set[str]]],
                    has_split: list[dict[str, bool]], frozen: int = 0) -> list[Counter]:
    """Move train rows that overlap another stage's val/test rows into an eval split (in place).

    ``keys[i](row)`` gives the overlap keys of a row of stage ``i`` (its normalised lines and its
    whole-text key); ``has_split[i]`` says which eval splits stage ``i`` has (asked for or non-empty).
    The first ``frozen`` stages are only read (stages already prepared and saved). Returns, per stage,
    the counts moved to "val" / "test" and "dropped" (a stage with no eval split at all).
    """
    moved = [Counter() for _ in stage_splits]
    row_keys = [{id(r): keys[i](r) for rows in splits.values() for r in rows}
                for i, splits in enumerate(stage_splits)]
    changed = True
    while changed:
        changed = False
        owner: dict[str, dict[int, str]] = {}  # key -> {stage: its strongest eval split}
        for i, splits in enumerate(stage_splits):
            for name in ("val", "test"):
                for r in splits.get(name, []):
                    for k in row_keys[i][id(r)]:
                        slot = owner.setdefault(k, {})
                        if slot.get(i) != "test":
                            slot[i] = name
        for i, splits in enumerate(stage_splits):
            if i < frozen:
                continue
            kept = []
            for r in splits.get("train", []):
                found = {name for k in row_keys[i][id(r)] for j, name in owner.get(k, {}).items() if j != i}
                if not found:
                    kept.append(r)
                    continue
                want = "test" if "test" in found else "val"
                other = "val" if want == "test" else "test"
                target = want if has_split[i].get(want) else other if has_split[i].get(other) else None
                if target is None:
                    moved[i]["dropped"] += 1
                else:
                    splits.setdefault(target, []).append(r)
                    moved[i][target] += 1
                changed = True
            splits["train"] = kept
    return moved


def _dedupe(pairs: list[tuple[str, dict]], seen: set[str]) -> tuple[list[tuple[str, dict]], int]:
    kept = []
    for k, r in pairs:
        if k not in seen:
            seen.add(k)
            kept.append((k, r))
    return kept, len(pairs) - len(kept)


def _split(pairs: list[tuple[str, dict]], cfg: SplitConfig, group: Key | None = None) -> dict[str, list[dict]]:
    units = [(group(r), r) for _, r in pairs] if group is not None else pairs
    distinct = sorted({k for k, _ in units}, key=lambda k: (rank(k, cfg.seed), k))
    n = len(distinct)
    n_test, n_val = _count(n, cfg.test), _count(n, cfg.val)
    if n_test + n_val >= n and n > 0:  # never leave train empty
        n_val = max(0, n - 1 - n_test)
    place = {k: "test" for k in distinct[:n_test]}
    place.update({k: "val" for k in distinct[n_test:n_test + n_val]})
    out: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for k, rec in units:
        out[place.get(k, "train")].append(rec)
    return out


def overlap(splits: dict[str, list[dict]], key: Key) -> int:
    """How many keys occur in more than one split (0 after :func:`make_splits` with dedupe): for tests/reports."""
    owners: dict[str, set[str]] = {}
    for name, rows in splits.items():
        for r in rows:
            owners.setdefault(key(r), set()).add(name)
    return sum(1 for names in owners.values() if len(names) > 1)


def _count(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return max(1, round(n * fraction))


def _eval_first(name: str) -> int:
    return {"test": 0, "val": 1, "train": 2}.get(name, 3)
