"""One stage's data, ready for training: read -> (parse) -> clean -> dedupe + split (-> synthesize).

Training only ever reads what this module returns (or what :func:`save_prepared` wrote), so every
decision about a row is made, and counted, here. The report invariant for ``poems`` and
``instructions``: ``rows_in == rows_out + sum(dropped.values())``; for ``synthesize`` it holds for
poems (``poems_out`` instead of ``rows_out``) and ``rows_out`` counts the pairs made.

``synthesize`` splits the *poems* first and makes pairs within each split, so a poem's pairs are all
in one split: no poem seen in training is asked for again in val/test.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from quill.config import StageConfig
from quill.data.clean import clean_instructions, clean_poems, instruction_group, instruction_key, text_key
from quill.data.instructions import rows_to_instructions
from quill.data.sources import read_source
from quill.data.split import SPLITS, make_splits
from quill.data.synthesize import synthesize
from quill.errors import DataError


@dataclass
class PreparedData:
    kind: Literal["poems", "instructions"]
    splits: dict[str, list[dict]]
    report: dict = field(default_factory=dict)


def poem_key(record: dict) -> str:
    return text_key(record["text"])


def prepare_stage_data(stage: StageConfig, base_dir: Path | str | None = None) -> PreparedData:
    """Read, clean, dedupe and split one stage's data per ``stage.data.kind`` (see the module docstring)."""
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
        else:
            result = clean_poems(rows, cfg.clean)
        dropped.update(result.dropped)
        special += result.special_tokens_removed
        cleaned[name] = result.records
    key = instruction_key if cfg.kind == "instructions" else poem_key
    group = instruction_group if cfg.kind == "instructions" else None
    splits, split_dropped = make_splits(cleaned, cfg.split, key, dedupe_rows=cfg.clean.dedupe, group=group)
    dropped.update(split_dropped)

    report: dict = {"source": source.origin, "kind": cfg.kind, "records": "poems" if cfg.kind == "poems"
                    else "instructions", "rows_in": source.rows_read}
    kind: Literal["poems", "instructions"] = "poems" if cfg.kind == "poems" else "instructions"
    if cfg.kind == "synthesize":
        report["poems_out"] = sum(len(v) for v in splits.values())
        report["poem_splits"] = {name: len(rows) for name, rows in splits.items()}
        by_kind: Counter = Counter()
        for name in list(splits):
            splits[name], made = synthesize(splits[name], cfg.synthesize)
            by_kind.update(made)
        report["pairs_by_kind"] = dict(sorted(by_kind.items()))
    if not any(splits.values()):
        hint = ("; a poem corpus? use data.kind: synthesize" if cfg.kind == "instructions"
                and dropped.get("no_roles", 0) * 2 > source.rows_read else "")
        raise DataError(f"{cfg.source}: no usable rows ({source.rows_read} read; dropped: "
                        f"{_reasons(dropped) or 'none'}){hint}")
    report.update(dropped=dict(sorted((k, v) for k, v in dropped.items() if v)),
                  rows_out=sum(len(v) for v in splits.values()),
                  splits={name: len(splits.get(name, [])) for name in SPLITS},
                  special_tokens_removed=special)
    return PreparedData(kind, {name: splits.get(name, []) for name in SPLITS}, report)


def save_prepared(prepared: PreparedData, folder: Path | str) -> None:
    """``train.jsonl``, ``val.jsonl``, ``test.jsonl`` (all three, possibly empty) and ``report.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        tmp = folder / f".{name}.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            for rec in prepared.splits.get(name, []):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, folder / f"{name}.jsonl")
    report = {"kind": prepared.kind, **prepared.report}
    (folder / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_prepared(folder: Path | str) -> PreparedData:
    """What :func:`save_prepared` wrote; the kind comes from ``report.json``."""
    folder = Path(folder)
    report_path = folder / "report.json"
    if not report_path.exists():
        raise DataError(f"{report_path}: missing (not a prepared data folder)")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    kind = "instructions" if report.get("kind") in ("instructions", "synthesize") else "poems"
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


def _reasons(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()) if v)
