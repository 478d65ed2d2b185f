"""Writing files and folders atomically: a reader, or a process killed mid-write, sees the old version or
the new one whole, never half of either.

Every helper writes to a temp sibling of the target (``NAME.tmp-PID``: the same folder, so the same
filesystem, which is what makes the final rename atomic; the pid keeps two processes apart, so one
process writes a given target at a time) and removes it when the write fails. ``fsync=True`` flushes
the data to disk before the rename, so a power loss cannot leave the new name on an empty file: the
default for the small state files resume trusts; caches that are rebuilt when lost pass ``fsync=False``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Callable, Iterator


def temp_sibling(path: str | Path, tag: str = "tmp") -> Path:
    """``NAME.<tag>-PID`` next to ``path``: where this process stages a new version of it."""
    path = Path(path)
    return path.with_name(f"{path.name}.{tag}-{os.getpid()}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Persist a folder's entries (a rename into it); quietly nothing where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """A temp file path to hand to a writer that wants a file name (safetensors, ``torch.save``, pyarrow,
    GGUF); it replaces ``target`` when the block succeeds and is removed when the block raises."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(target: str | Path, mode: str = "w", *, encoding: str | None = "utf-8",
                fsync: bool = True) -> Iterator[IO]:
    """``open(target, mode)`` (``"w"`` or ``"wb"``) for a file too large to build in memory first (JSONL
    splits): the lines go to a temp sibling, which replaces ``target`` when the block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole new file: mode 'w' or 'wb', not {mode!r}")
    if "b" in mode:
        encoding = None
    with atomic_path(target, fsync=False) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> None:
    with atomic_open(path, "wb", fsync=fsync) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8", fsync: bool = True) -> None:
    with atomic_open(path, "w", encoding=encoding, fsync=fsync) as f:
        f.write(text)


def atomic_write_json(path: str | Path, obj: Any, *, fsync: bool = True, **json_kwargs) -> None:
    """``obj`` as JSON (default: indented, UTF-8 kept as is, NaN allowed), ending in a newline. The text is
    built before the temp file is opened, so an object that is not JSON leaves nothing behind."""
    text = json.dumps(obj, **{"indent": 2, "ensure_ascii": False, **json_kwargs})
    atomic_write_text(path, text + "\n", fsync=fsync)


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: str | Path, skip_broken: bool = False) -> list[dict]:
    """The rows of a JSONL file ([] when there is none). ``skip_broken``: drop lines that are not JSON (the
    last line of a log appended to by a killed process) instead of raising ``json.JSONDecodeError``."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if not skip_broken:
                raise
    return rows


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, replace: bool = True, tmp: str | Path | None = None,
               old: str | Path | None = None, fsync_parent: bool = False,
               before_swap: Callable[[], None] | None = None) -> Iterator[Path]:
    """A fresh, empty temp folder to fill; it becomes ``target`` when the block succeeds.

    ``replace=True``: an existing ``target`` is renamed aside to ``old`` (default ``NAME.old-PID``), the
    new folder renamed in, then the old one removed; when anything fails the temp folder is removed and
    the old one is put back. Only a kill between the two renames leaves the previous folder, whole,
    under ``old`` (``train.checkpoint.find_checkpoint`` looks there). ``replace=False`` (caches): an
    existing ``target`` is never touched; the rename raises ``OSError`` when another process has put a
    non-empty one there meanwhile, and the temp folder is removed.

    ``tmp``: a fixed temp name, for a folder several processes write into (the ranks of a checkpoint).
    ``fsync_parent``: persist the renames (the files inside are the caller's to flush). ``before_swap``:
    called between moving the old folder aside and renaming the new one in (fault injection).
    """
    target = Path(target)
    tmp = Path(tmp) if tmp is not None else temp_sibling(target)
    old = Path(old) if old is not None else temp_sibling(target, "old")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if replace:
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                os.rename(target, old)
            if before_swap is not None:
                before_swap()
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if replace and old.exists() and not target.exists():
            os.rename(old, target)
        raise
    if replace:
        shutil.rmtree(old, ignore_errors=True)
    if fsync_parent:
        fsync_dir(target.parent)
