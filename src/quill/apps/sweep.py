"""``quill sweep CONFIG``: train every point of a grid and tabulate the reference's table plus speed and metrics.

The grid is the config's ``sweep:`` mapping (dotted key -> values) and/or ``--grid KEY=V1,V2``
(the command line wins per key); points are the cartesian product, each a full run in OUT/<point>.
A point whose run folder has a complete summary.json is not trained again, so an interrupted
sweep is resumed by running the same command. It sits in ``apps`` because it runs both training and
evaluation, the two layers below it.
"""
from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from quill.config import ConfigError, apply_override, load_config, load_raw
from quill.evaluate.compare import run_row, table_of
from quill.evaluate.run import run_eval
from quill.evaluate.tables import csv_text, md_table
from quill.run import RunFolder
from quill.train.pipeline import train


def parse_value(text: str) -> Any:
    """``1e-4`` -> 0.0001 (YAML would keep it a string), ``4`` -> 4, ``true`` -> True, else YAML/string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return yaml.safe_load(text) if text.strip() else None


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["stages.dapt.train.lr=1e-4,5e-5", ...]`` -> ``{"stages.dapt.train.lr": [1e-4, 5e-5]}``."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"--grid {item}: expected KEY=V1,V2,...")
        grid[key.strip()] = [parse_value(v.strip()) for v in values.split(",")]
    return grid


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_id(point: dict[str, Any]) -> str:
    """A readable, filesystem-safe folder name: ``dapt.lr=0.0001_dapt.grad_accum=2``."""
    parts = []
    for key, value in point.items():
        short = key.removeprefix("stages.").replace(".train.", ".")
        parts.append(f"{short}={value}")
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", "_".join(parts)) or "default"


def _train(cfg, run_dir: Path, base_dir: Path) -> None:
    """One training run (indirection so tests can count calls)."""
    train(cfg, run_dir, overwrite=True, base_dir=base_dir)


def run_sweep(config_path, overrides: list[str] | None = None, grid: list[str] | dict | None = None,
              out: str | Path | None = None, with_eval: bool = True) -> dict[str, Path]:
    """Train each grid point (skipping finished ones), optionally quick-eval it, write sweep.md / sweep.csv."""
    overrides = list(overrides or [])
    raw = load_raw(config_path)
    for item in overrides:
        apply_override(raw, item)
    full = dict((raw.get("sweep") or {}))
    full.update(grid if isinstance(grid, dict) else parse_grid(grid or []))
    if not full:
        raise ConfigError(f"{config_path}: nothing to sweep: add a `sweep:` mapping or --grid KEY=V1,V2")
    base_cfg = load_config(config_path, overrides)
    out = Path(out) if out else Path(base_cfg.output_dir) / f"{base_cfg.name}-sweep"
    out.mkdir(parents=True, exist_ok=True)
    base_dir = Path(config_path).resolve().parent
    points = grid_points(full)
    rows, trained = [], 0
    for i, point in enumerate(points, 1):
        pid = point_id(point)
        run_dir = out / pid
        run = RunFolder(run_dir)
        sets = [f"{k}={json.dumps(v)}" for k, v in point.items()]
        if run.complete():
            print(f"[sweep {i}/{len(points)}] {pid}: finished before, skipped")
        else:
            print(f"[sweep {i}/{len(points)}] {pid}: training")
            cfg = load_config(config_path, overrides + sets)
            t0 = time.perf_counter()
            _train(cfg, run_dir, base_dir)
            trained += 1
            print(f"[sweep {i}/{len(points)}] {pid}: trained in {time.perf_counter() - t0:.0f} s")
        if with_eval and not run.eval_path.is_file():
            run_eval(run_dir, quick=True, losses=False)
        row = {"point": pid, **{k: v for k, v in point.items()}}
        row.update({k: v for k, v in run_row(run).items() if k != "run"})
        rows.append(row)
    headers, table = table_of(rows)
    files = {"md": out / "sweep.md", "csv": out / "sweep.csv"}
    files["md"].write_text(f"# quill sweep: {base_cfg.name}\n\n{len(points)} points over "
                           f"{', '.join(full)}; trained {trained} this time.\n\n{md_table(headers, table)}\n",
                           encoding="utf-8")
    files["csv"].write_text(csv_text(headers, table), encoding="utf-8")
    print(f"wrote {files['md']} and {files['csv']}")
    return files
