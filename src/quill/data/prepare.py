"""One stage's data, ready for training: read -> (parse) -> clean -> dedupe + split (-> synthesize).

Training only ever reads what this module returns (or what :func:`save_prepared` wrote), so every
decision about a row is made, and counted, here. The report invariant for ``poems`` and
``instructions``: ``rows_in == rows_out + sum(dropped.values())``; for ``synthesize`` it holds for
poems (``poems_out`` instead of ``rows_out``) and ``rows_out`` counts the pairs made.

``synthesize`` splits the *poems* first and makes pairs within each split, so a poem's pairs are all
in one split: no poem seen in training is asked for again in val/test. Its report also shows the mix
(pairs by kind, by the answers' form / scheme / meter, by what prompts name) and the truth rates
(share of pairs whose answer has what the prompt names, re-measured: 1.0 by construction).

Stages of one run share one held-out set (:func:`prepare_stages`, see ``split.hold_out_across``): a
poem in any stage's val/test is in no stage's train; what moved is counted in ``held_out_across_stages``.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from quill.config import StageConfig
from quill.data.clean import clean_instructions, clean_poems, instruction_group, instruction_key, text_key
from quill.data.instructions import rows_to_instructions
from quill.data.preferences import (clean_preferences, preference_group, preference_key, preference_texts,
                                    rows_to_preferences)
from quill.data.sources import read_source
from quill.data.split import SPLITS, hold_out_across, make_splits
from quill.data.synthesize import mix, select_poems, synthesize, truth_rates
from quill.errors import DataError
from quill.files import atomic_open, atomic_write_json
from quill.run import DATA_MARKER


@dataclass
class PreparedData:
    kind: Literal["poems", "instructions", "preferences"]
    splits: dict[str, list[dict]]
    report: dict = field(default_factory=dict)


def poem_key(record: dict) -> str:
    return text_key(record["text"])


MIN_SHARED_WORDS = 3  # shorter lines ("O God!", "Alas!") recur across poems and say nothing of identity


@dataclass
class _Split:
    """A stage read, cleaned and split, before synthesis: what the stages' shared held-out set acts on."""
    stage: StageConfig | None  # None: a stage already prepared (only read)
    source: object
    splits: dict[str, list[dict]]
    dropped: Counter
    special: int


def prepare_stage_data(stage: StageConfig, base_dir: Path | str | None = None,
                       others: Sequence[PreparedData] = ()) -> PreparedData:
    """Read, clean, dedupe and split one stage's data per ``stage.data.kind`` (see the module docstring).

    ``others``: stages already prepared; this stage's train keeps none of their val/test poems."""
    return prepare_stages([stage], base_dir, others)[stage.name]


def prepare_stages(stages: Sequence[StageConfig], base_dir: Path | str | None = None,
                   others: Sequence[PreparedData] = ()) -> dict[str, PreparedData]:
    """Every stage's data, with one held-out set across stages (``split.hold_out_across``).

    ``others``: stages already prepared (loaded on resume); they are only read, and the new stages'
    train keeps none of their val/test poems."""
    firsts = [_read_and_split(st, base_dir) for st in stages]
    frozen = _frozen(others)
    kinds = [p.kind for p in others] + [_row_kind(st) for st in stages]
    moved = _share_held_out([*frozen, *firsts], kinds, frozen=len(frozen))[len(frozen):]
    return {f.stage.name: _finish(f, m) for f, m in zip(firsts, moved)}


def _frozen(others: Sequence[PreparedData]) -> list[_Split]:
    return [_Split(None, None, {n: list(p.splits.get(n, [])) for n in SPLITS}, Counter(), 0) for p in others]


def overlap_keys(record: dict, kind: str = "poems") -> set[str]:
    """What identifies a record's poem across stages: its whole text and each line of >= 3 words,
    normalised as duplicate keys are (case, punctuation, spacing ignored). For instruction records the
    poem is the answer plus any verse quoted in a prompt (lines after its first: "Continue this poem:")."""
    if kind == "poems":
        texts = [record["text"]]
    elif kind == "preferences":
        texts = preference_texts(record)
    else:
        texts = [m["content"] if m["role"] == "assistant" else m["content"].partition("\n")[2]
                 for m in record["messages"]]
    keys = set()
    for text in texts:
        if text.strip():
            keys.add("poem:" + text_key(text))
            keys.update(k for k in map(text_key, text.split("\n")) if k.count(" ") + 1 >= MIN_SHARED_WORDS)
    return keys


def _row_kind(stage: StageConfig) -> str:
    return stage.data.kind if stage.data.kind in ("instructions", "preferences") else "poems"


def _share_held_out(firsts: list[_Split], kinds: list[str], frozen: int = 0) -> list[Counter]:
    if len(firsts) < 2:
        return [Counter() for _ in firsts]
    keys = [lambda r, k=k: overlap_keys(r, k) for k in kinds]
    has = [{name: bool(f.splits.get(name)) or (f.stage is not None and getattr(f.stage.data.split, name) > 0)
            for name in ("val", "test")} for f in firsts]
    return hold_out_across([f.splits for f in firsts], keys, has, frozen=frozen)


def _read_and_split(stage: StageConfig, base_dir: Path | str | None) -> _Split:
    cfg = stage.data
    source = read_source(cfg, base_dir)
    dropped: Counter = Counter(source.skipped)
    special = 0
    cleaned: dict[str, list[dict]] = {}
    for name, rows in source.splits.items():
        if cfg.kind == "instructions":
            records, skipped = rows_to_instructions(rows)
            dropped.update(skipped)
            result = clean_instructions(records, cfg.clean)
        elif cfg.kind == "preferences":
            records, skipped = rows_to_preferences(rows)
            dropped.update(skipped)
            result = clean_preferences(records, cfg.clean)
        else:
            result = clean_poems(rows, cfg.clean)
        dropped.update(result.dropped)
        special += result.special_tokens_removed
        cleaned[name] = result.records
    if cfg.kind == "synthesize":   # which poems pairs are made from: before the split, so its fractions hold
        cleaned, selected_out = select_poems(cleaned, cfg.synthesize)
        dropped.update(selected_out)
    key, group = {"instructions": (instruction_key, instruction_group),
                  "preferences": (preference_key, preference_group)}.get(cfg.kind, (poem_key, None))
    splits, split_dropped = make_splits(cleaned, cfg.split, key, dedupe_rows=cfg.clean.dedupe, group=group)
    dropped.update(split_dropped)
    return _Split(stage, source, splits, dropped, special)


def _finish(first: _Split, moved: Counter) -> PreparedData:
    """Synthesize (for ``synthesize``) and write the report."""
    cfg, source, splits, dropped = first.stage.data, first.source, first.splits, first.dropped
    if moved.get("dropped"):
        dropped["held_out_in_other_stage"] += moved["dropped"]
    kind = _record_kind(cfg.kind)
    report: dict = {"source": source.origin, "kind": cfg.kind, "records": kind, "rows_in": source.rows_read}
    if moved:
        report["held_out_across_stages"] = dict(sorted(moved.items()))
    if cfg.kind == "synthesize":
        report["poems_out"] = sum(len(v) for v in splits.values())
        report["poem_splits"] = {name: len(rows) for name, rows in splits.items()}
        by_kind: Counter = Counter()
        for name in list(splits):
            splits[name], made = synthesize(splits[name], cfg.synthesize)
            by_kind.update(made)
        report["pairs_by_kind"] = dict(sorted(by_kind.items()))
        pairs = [r for rows in splits.values() for r in rows]
        report["mix"] = mix(pairs)
        report["truth"] = truth_rates(pairs)
    if not any(splits.values()):
        hint = ("; a poem corpus? use data.kind: synthesize" if cfg.kind == "instructions"
                and dropped.get("no_roles", 0) * 2 > source.rows_read else "")
        raise DataError(f"{cfg.source}: no usable rows ({source.rows_read} read; dropped: "
                        f"{_reasons(dropped) or 'none'}){hint}")
    report.update(dropped=dict(sorted((k, v) for k, v in dropped.items() if v)),
                  rows_out=sum(len(v) for v in splits.values()),
                  splits={name: len(splits.get(name, [])) for name in SPLITS},
                  special_tokens_removed=first.special)
    return PreparedData(kind, {name: splits.get(name, []) for name in SPLITS}, report)


def save_prepared(prepared: PreparedData, folder: Path | str) -> None:
    """``train.jsonl``, ``val.jsonl``, ``test.jsonl`` (all three, possibly empty) and ``report.json``.

    ``report.json`` is what resume trusts as "this stage's data is ready" (``RunFolder.data_ready``): it is
    removed first and written last, each file atomically, so a kill in between never leaves a report
    beside splits that are half written or from another preparation."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DATA_MARKER).unlink(missing_ok=True)
    for name in SPLITS:
        with atomic_open(folder / f"{name}.jsonl") as f:
            for rec in prepared.splits.get(name, []):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    atomic_write_json(folder / DATA_MARKER, {"kind": prepared.kind, **prepared.report})


def load_prepared(folder: Path | str) -> PreparedData:
    """What :func:`save_prepared` wrote; the kind comes from ``report.json``."""
    folder = Path(folder)
    report_path = folder / DATA_MARKER
    if not report_path.exists():
        raise DataError(f"{report_path}: missing (not a prepared data folder)")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    kind = _record_kind(report.get("kind"))
    splits: dict[str, list[dict]] = {}
    for name in SPLITS:
        path = folder / f"{name}.jsonl"
        rows = []
        if path.exists():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}: line {number}: not valid JSON: {err.msg}") from None
        splits[name] = rows
    return PreparedData(kind, splits, report)


def _record_kind(data_kind: str | None) -> Literal["poems", "instructions", "preferences"]:
    """The records a data kind prepares: synthesize makes instruction records."""
    return {"instructions": "instructions", "synthesize": "instructions", "preferences": "preferences"}.get(
        data_kind or "", "poems")


def note_tokenized(folder: Path | str, counts: dict) -> None:
    """Add what tokenizing found (``tokenized``: truncations, pairs skipped) to a prepared stage's report."""
    path = Path(folder) / DATA_MARKER
    report = json.loads(path.read_text(encoding="utf-8"))
    if report.get("tokenized") != counts:
        atomic_write_json(path, {**report, "tokenized": counts})


def _reasons(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()) if v)
