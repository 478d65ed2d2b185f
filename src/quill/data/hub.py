"""Hugging Face hub data sets (and folders written by ``Dataset.save_to_disk``) as canonical rows.

Why a reachability probe first: without network, ``datasets.load_dataset`` retries for ~25 s before it
fails. We try one TCP connection to the hub (3 s) and, when it fails or ``HF_HUB_OFFLINE`` is set,
load in offline mode: a data set already in the local cache still loads, anything else fails at once
with one line that says the hub cannot be reached.

Splits the data set already has are kept (``validation`` -> ``val``); ``data.hub_split`` loads one split
only, which is then split by fractions like a file. ``data.max_rows`` caps the total, shared out over
the splits in proportion to their sizes so a quick run still has val/test rows.
"""
from __future__ import annotations

import contextlib
import socket
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from quill.config import DataConfig
from quill.data.columns import map_columns, project
from quill.data.gutenberg import group_lines, pick
from quill.data.records import UNSPLIT, SourceResult, from_split_records, one_line
from quill.errors import DataError
from quill.network import PROBE_TIMEOUT_S, env_offline, hub_reachable  # noqa: F401 - tests patch hub_reachable here

GUTENBERG_HUB = "biglam/gutenberg-poetry-corpus"


def read_hub(hub_id: str, data_cfg: DataConfig) -> SourceResult:
    """Load ``hub_id`` with ``datasets.load_dataset`` and map its columns."""
    loaded = load_hub_dataset(hub_id, data_cfg.hub_config, data_cfg.hub_split)
    splits = _as_split_dict(loaded, data_cfg.hub_split)
    splits = _cap_rows(splits, data_cfg.max_rows if hub_id != GUTENBERG_HUB else None)
    if hub_id == GUTENBERG_HUB:
        return _gutenberg_hub(splits, data_cfg, hub_id)
    if data_cfg.hub_split:  # one split asked for: treat it like a file, split later by fractions
        ds = next(iter(splits.values()))
        mapping = map_columns(list(ds.column_names), data_cfg, hub_id)
        rows = [project(r, mapping) for r in ds.to_list()]
        return SourceResult({UNSPLIT: rows}, Counter(), len(rows), f"hub:{hub_id}[{data_cfg.hub_split}]")
    records = {name: ds.to_list() for name, ds in splits.items()}
    return from_split_records(records, data_cfg, hub_id, f"hub:{hub_id}")


def read_saved_dataset(path: Path, data_cfg: DataConfig) -> SourceResult:
    """A folder written by ``Dataset(Dict).save_to_disk``: the same code path as the hub, no network."""
    import datasets
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(f"{path}: not a readable saved data set: {one_line(err)}") from None
    splits = _cap_rows(_as_split_dict(loaded, None), data_cfg.max_rows)
    return from_split_records({k: v.to_list() for k, v in splits.items()}, data_cfg, str(path),
                              f"{path} (saved data set)")


def load_hub_dataset(hub_id: str, config: str | None = None, split: str | None = None) -> Any:
    """``datasets.load_dataset`` with a fast, one-line failure when the hub cannot be reached."""
    import datasets
    offline = env_offline("HF_DATASETS_OFFLINE") or not hub_reachable()
    try:
        with _offline_mode(offline):
            return datasets.load_dataset(hub_id, name=config, split=split)
    except Exception as err:
        if offline or _is_connection_error(err):
            raise DataError(f"{hub_id}: cannot reach the Hugging Face hub (offline?) and the data set is not "
                            "in the local cache; use a local file or connect once to download it") from None
        name = type(err).__name__
        if name in ("DatasetNotFoundError", "RepositoryNotFoundError", "GatedRepoError"):
            raise DataError(f"{hub_id}: no such data set on the hub (or it is gated/private)") from None
        raise DataError(f"{hub_id}: cannot load the data set: {one_line(err)[:300]}") from None


@contextlib.contextmanager
def _offline_mode(offline: bool) -> Iterator[None]:
    """Switch the libraries' offline flags (read at import time, so env vars set now would be ignored)."""
    if not offline:
        yield
        return
    import datasets.config as dcfg
    import huggingface_hub.constants as hcfg
    saved = (dcfg.HF_HUB_OFFLINE, hcfg.HF_HUB_OFFLINE)
    dcfg.HF_HUB_OFFLINE = hcfg.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dcfg.HF_HUB_OFFLINE, hcfg.HF_HUB_OFFLINE = saved


def _is_connection_error(err: BaseException) -> bool:
    seen = 0
    while err is not None and seen < 10:
        text = f"{type(err).__name__} {err}".lower()
        if isinstance(err, (ConnectionError, TimeoutError, socket.gaierror)) or any(
                k in text for k in ("offline", "couldn't reach", "connection", "name or service not known")):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _as_split_dict(loaded: Any, only: str | None) -> dict[str, Any]:
    """``Dataset`` or ``DatasetDict`` -> {split name: Dataset} (names as the data set has them)."""
    if hasattr(loaded, "column_names") and not isinstance(loaded.column_names, dict):
        return {only or "train": loaded}
    return dict(loaded)


def _cap_rows(splits: dict[str, Any], max_rows: int | None) -> dict[str, Any]:
    """At most ``max_rows`` rows in all, shared out by split size (each split keeps at least one row)."""
    total = sum(len(ds) for ds in splits.values())
    if max_rows is None or total <= max_rows:
        return splits
    out = {}
    for name, ds in splits.items():
        n = max(1, round(max_rows * len(ds) / total)) if len(ds) else 0
        out[name] = ds.select(range(min(n, len(ds))))
    return out


def _gutenberg_hub(splits: dict[str, Any], data_cfg: DataConfig, hub_id: str) -> SourceResult:
    """``line`` + ``gutenberg_id`` rows -> passages of ``passage_lines`` consecutive lines within one book."""
    rows: list[dict] = []
    for ds in splits.values():
        missing = [c for c in ("line", "gutenberg_id") if c not in ds.column_names]
        if missing:
            raise DataError(f"{hub_id}: column '{missing[0]}' not found; columns: {', '.join(ds.column_names)}")
        rows.extend({"text": t} for t in group_lines(ds["line"], ds["gutenberg_id"], data_cfg.passage_lines))
    rows = [rows[i] for i in pick(len(rows), data_cfg.max_rows, data_cfg.split.seed)]
    return SourceResult({UNSPLIT: rows}, Counter(), len(rows), f"hub:{hub_id} (passages of "
                        f"{data_cfg.passage_lines} lines)")
