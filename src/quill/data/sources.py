"""Read any supported source into rows with canonical field names.

One entry point, :func:`read_source`, so the rest of the data layer never cares where rows came from.
Readers only *map* columns (``Poem`` -> ``text``, ``Poet`` -> ``author`` ..., see ``columns.py``); they do
not clean or judge content: that is ``clean.py``'s job, so every decision about a row is counted in one
place. Hub data sets live in ``hub.py``, the offline Gutenberg corpus in ``gutenberg.py``, and the
:class:`SourceResult` every reader returns in ``records.py``.

Canonical fields: ``text``, ``title``, ``author``, ``tags`` (poems) and ``conversation``, ``prompt``,
``completion``, ``messages`` (instructions). A row holds only the fields the source has.

Where a source is resolved (first match wins):
  0. ``arena:PATH.sqlite`` -> the arena's votes as preference pairs (``arena.py``, ``data.kind: preferences``);
  1. ``format: gutenberg`` or ``source: gutenberg`` -> the offline Gutenberg Poetry Corpus (``gutenberg.py``);
  2. a preset name (``poetry-foundation``, ``poetry-instructions``, ``gutenberg-hub``) or ``format: hub``;
  3. an existing path, relative to the current directory first, then to ``base_dir`` (the config's folder);
  4. anything shaped like ``owner/name`` -> a Hugging Face hub id.
Every failure is a :class:`quill.errors.DataError` of one line naming the file (and row or column).
"""
from __future__ import annotations

import gzip
import io
import json
import re
from collections import Counter
from pathlib import Path

from quill.config import DataConfig
from quill.data.arena import read_arena
from quill.data.columns import map_columns, plain, project
from quill.data.gutenberg import read_gutenberg
from quill.data.hub import read_hub, read_saved_dataset
from quill.data.records import SPLIT_NAMES, UNSPLIT, SourceResult, columns_of, from_split_records, one_line
from quill.errors import DataError

# presets: short names for the hub data sets the project knows (their columns are auto-detected)
PRESETS: dict[str, str] = {
    "poetry-foundation": "suayptalha/Poetry-Foundation-Poems",   # Title, Poem, Poet, Tags; 13,854 rows
    "poetry-instructions": "isaacrehg/poetry-instructions",      # conversation; train/validation/test
    "gutenberg-hub": "biglam/gutenberg-poetry-corpus",           # line, gutenberg_id: grouped into passages
}
FILE_FORMATS = ("csv", "json", "jsonl", "parquet", "txt")


# --------------------------------------------------------------------------- entry point
def read_source(data_cfg: DataConfig, base_dir: Path | str | None = None) -> SourceResult:
    """Read ``data_cfg.source`` into canonical rows (see the module docstring for how it is resolved)."""
    source, fmt = data_cfg.source.strip(), data_cfg.format
    if source.lower().startswith("arena:"):
        db = source[len("arena:"):].strip()
        return read_arena(resolve_path(db, base_dir) or Path(db), data_cfg)
    if fmt == "gutenberg" or source.lower() == "gutenberg":
        return read_gutenberg(data_cfg)
    if fmt == "hub" or source in PRESETS:
        return read_hub(PRESETS.get(source, source), data_cfg)
    path = resolve_path(source, base_dir)
    if path is None:
        looks_like_file = Path(source).suffix.lower().lstrip(".") in FILE_FORMATS + ("gz",)
        if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not looks_like_file:
            return read_hub(source, data_cfg)
        where = f" or {Path(base_dir)}" if base_dir is not None else ""
        raise DataError(f"{source}: file not found (looked in the current directory{where}); "
                        f"not a preset either ({', '.join(['gutenberg', *PRESETS])})")
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return read_saved_dataset(path, data_cfg)
        return read_txt(path, data_cfg)
    return read_file(path, data_cfg, fmt)


def resolve_path(source: str, base_dir: Path | str | None) -> Path | None:
    """Relative paths are tried against the current directory first, then ``base_dir``."""
    candidates = [Path(source).expanduser()]
    if base_dir is not None and not Path(source).is_absolute():
        candidates.append(Path(base_dir) / source)
    return next((p for p in candidates if p.exists()), None)


def file_format(path: Path, fmt: str = "auto") -> str:
    """The format from the config or the suffix (``.gz`` looked through): csv, json, jsonl, parquet or txt."""
    if fmt in FILE_FORMATS:
        return fmt
    suffixes = [s.lower().lstrip(".") for s in path.suffixes]
    if suffixes and suffixes[-1] in ("gz", "gzip"):
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    ext = {"ndjson": "jsonl", "tsv": "csv", "pq": "parquet", "text": "txt"}.get(last, last)
    if ext not in FILE_FORMATS:
        raise DataError(f"{path}: unknown file type '{''.join(path.suffixes) or '(none)'}'; expected "
                        ".csv .json .jsonl .parquet .txt (optionally .gz) or set data.format")
    return ext


# --------------------------------------------------------------------------- files
def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip-compressed (by magic number, not only by suffix)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: broken gzip data: {err}") from None
    return data


def decode_utf8(data: bytes, path: Path) -> str:
    """Decode strictly, so a wrong encoding is reported (byte offset and line) instead of turning into mojibake."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}: not UTF-8 text: byte {err.start} (line {line}) is "
                        f"0x{data[err.start]:02x}; re-save the file as UTF-8") from None


def read_text(path: Path) -> str:
    return decode_utf8(read_bytes(path), path)


def read_file(path: Path, data_cfg: DataConfig, fmt: str = "auto") -> SourceResult:
    """One local file: CSV, JSON, JSONL or Parquet (``.gz`` allowed), or a single ``.txt`` file of poems."""
    kind = file_format(path, fmt)
    if kind == "txt":
        return read_txt(path, data_cfg)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    skipped: Counter = Counter()
    if kind == "csv":
        records, columns = _read_csv(path, data_cfg.max_rows)
    elif kind == "parquet":
        records, columns = _read_parquet(path, data_cfg.max_rows)
    elif kind == "jsonl":
        records, columns = _read_jsonl(path, data_cfg.max_rows, skipped)
    else:
        splits = _read_json(path, data_cfg.max_rows, skipped)
        if isinstance(splits, dict):
            return from_split_records(splits, data_cfg, str(path), f"{path} (json)", skipped)
        records, columns = splits, columns_of(splits)
    if not records and not skipped:
        raise DataError(f"{path}: no rows")
    mapping = map_columns(columns, data_cfg, str(path))
    rows = [project(rec, mapping) for rec in records]
    return SourceResult({UNSPLIT: rows}, skipped, len(rows) + sum(skipped.values()), f"{path} ({kind})")


def _read_csv(path: Path, max_rows: int | None) -> tuple[list[dict], list[str]]:
    """pandas' C parser handles quoted multi-line fields and stray ``\\r``; everything is read as text."""
    import pandas as pd
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: empty file")
    sep = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, nrows=max_rows)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file") from None
    except pd.errors.ParserError as err:
        detail = re.sub(r"^Error tokenizing data\. C error: ", "", one_line(err))
        hint = " (a quote that is never closed?)" if "EOF inside string" in detail else ""
        raise DataError(f"{path}: broken CSV: {detail}{hint}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df.to_dict("records"), list(df.columns)


def _read_parquet(path: Path, max_rows: int | None) -> tuple[list[dict], list[str]]:
    import pandas as pd
    data = read_bytes(path)
    try:
        df = pd.read_parquet(io.BytesIO(data))
    except Exception as err:  # pyarrow raises several types for a damaged file; all mean "not readable"
        raise DataError(f"{path}: not a readable Parquet file: {one_line(err)}") from None
    if max_rows is not None:
        df = df.head(max_rows)
    records = df.to_dict("records")
    for number, rec in enumerate(records, start=1):
        _check_depth(rec, path, f"row {number}: ")
    return [{k: plain(v) for k, v in rec.items()} for rec in records], [str(c) for c in df.columns]


def _read_jsonl(path: Path, max_rows: int | None, skipped: Counter) -> tuple[list[dict], list[str]]:
    """Line by line, so a broken line is reported by its number. Blank lines are not rows."""
    records: list[dict] = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):  # not splitlines: \u2028 is data
        if not line.strip():
            continue
        if max_rows is not None and len(records) >= max_rows:
            break
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number}: not valid JSON: {err.msg} (column {err.colno})") from None
        except RecursionError:  # json recurses per nesting level: a hostile file could crash the reader
            raise DataError(f"{path}: line {number}: JSON nested too deeply") from None
        if isinstance(obj, dict):
            _check_depth(obj, path, f"line {number}: ")
            records.append(obj)
        else:
            skipped["not_an_object"] += 1
    return records, columns_of(records)


def _read_json(path: Path, max_rows: int | None, skipped: Counter) -> list[dict] | dict[str, list[dict]]:
    """A list of objects, or ``{"train": [...], "val": [...]}`` (a data set that comes with its splits)."""
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: empty file")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: line {err.lineno}: not valid JSON: {err.msg} (column {err.colno})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
    _check_depth(obj, path)
    if isinstance(obj, dict) and obj and all(k in SPLIT_NAMES and isinstance(v, list) for k, v in obj.items()):
        return {k: _objects(v, skipped)[:max_rows] if max_rows else _objects(v, skipped) for k, v in obj.items()}
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of objects (or {{split: list}}), got {type(obj).__name__}")
    rows = _objects(obj, skipped)
    return rows[:max_rows] if max_rows is not None else rows


def _objects(items: list, skipped: Counter) -> list[dict]:
    out = [x for x in items if isinstance(x, dict)]
    if len(out) < len(items):
        skipped["not_an_object"] += len(items) - len(out)
    return out


# --------------------------------------------------------------------------- text folders
def read_txt(path: Path, data_cfg: DataConfig) -> SourceResult:
    """A folder of ``.txt`` files (sorted by name, subfolders included) or one ``.txt`` file.

    The rule: a file holds ONE poem, unless it contains a separator, in which case it holds several:
    a separator is a line of three or more dashes (``---``) or two or more blank lines in a row.
    A single blank line is a stanza break and stays inside the poem.
    """
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".txt", ".gz")
                   and p.name.lower().removesuffix(".gz").endswith(".txt")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no .txt files in this folder")
    rows: list[dict] = []
    skipped: Counter = Counter()
    for file in files:
        poems = split_poems(read_text(file))
        if not poems:
            skipped["empty_file"] += 1
        rows.extend({"text": poem} for poem in poems)
        if data_cfg.max_rows is not None and len(rows) >= data_cfg.max_rows:
            rows = rows[:data_cfg.max_rows]
            break
    return SourceResult({UNSPLIT: rows}, skipped, len(rows) + sum(skipped.values()), f"{path} (txt)")


_SEPARATOR = re.compile(r"\n[ \t]*-{3,}[ \t]*\n|\n(?:[ \t]*\n){2,}")


def split_poems(text: str) -> list[str]:
    """Cut a text file into poems at ``---`` lines or at 2+ blank lines (see :func:`read_txt`)."""
    text = "\n" + re.sub(r"\r*\n|\r", "\n", text) + "\n"
    return [chunk.strip("\n") for chunk in _SEPARATOR.split(text) if chunk.strip()]


MAX_DEPTH = 64  # lists/objects nested deeper than this are refused: later steps (plain(), str()) recurse per level


def _check_depth(obj, path: Path, where: str = "") -> None:
    """A DataError for values nested deeper than :data:`MAX_DEPTH` (iterative: never recurses itself)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DataError(f"{path}: {where}value nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, (dict, list)))
        elif isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, str)
                                                  and getattr(value, "ndim", 0)):
            stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list, tuple)) or getattr(v, "ndim", 0))
