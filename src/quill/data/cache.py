"""A disk cache for prepared and tokenized data, so a second run over the same corpus skips the work.

``cached(key_parts, build, save, load)`` returns ``load(folder)`` when a folder for the key exists, else
runs ``build()``, saves the result with ``save(value, tmp_folder)`` and renames the folder into place
(``quill.files.atomic_dir``: an interrupted build or two processes building at once never leave a
half-written entry).
The key is a hash of ``key_parts``, a JSON-able dict; put in it everything the result depends on:

- a hash of the records themselves (``data/encode.py``: a changed source is a new key, wherever it came from);
- the data config (``stage.data.model_dump()``), the tokenizer (:func:`tokenizer_fingerprint`: name and a
  hash of its vocabulary and special tokens), the template, block size, packing and seed.

Token sequences are stored as numpy arrays (``np.save``, never pickle): ids int32, the label mask (labels
are either -100 or the token itself) uint8, position ids uint16/int32 — 7 bytes a token.

Entries live under ``$QUILL_CACHE/data`` (default ``~/.cache/quill/data``); delete the folder to clear it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from quill.data.pack import IGNORE_INDEX, Sequence
from quill.files import atomic_dir
from quill.paths import cache_home

T = TypeVar("T")
CACHE_VERSION = 1  # bump when the stored layout or the meaning of an entry changes


def cache_root() -> Path:
    return cache_home() / "data"


def cache_key(key_parts: dict) -> str:
    text = json.dumps({"v": CACHE_VERSION, **key_parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def tokenizer_fingerprint(tokenizer) -> dict:
    """Name plus a hash of what decides the ids: the vocabulary/merges (fast tokenizers: the whole
    serialized tokenizer) and the special tokens."""
    try:
        body = tokenizer.backend_tokenizer.to_str()
    except AttributeError:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    digest = hashlib.sha256((body + special).encode("utf-8")).hexdigest()[:16]
    return {"name": getattr(tokenizer, "name_or_path", type(tokenizer).__name__), "hash": digest}


def cached(key_parts: dict | None, build: Callable[[], T], save: Callable[[T, Path], Any],
           load: Callable[[Path], T], root: Path | None = None) -> T:
    """``load`` the entry for ``key_parts`` if present, else ``build``, ``save`` and return the value.
    ``key_parts=None`` (an uncacheable source) builds every time. An entry that fails to load is rebuilt."""
    if key_parts is None:
        return build()
    folder = (root or cache_root()) / cache_key(key_parts)
    if (folder / "key.json").exists():
        try:
            return load(folder)
        except (OSError, ValueError, KeyError):
            shutil.rmtree(folder, ignore_errors=True)
    value = build()
    try:
        with atomic_dir(folder, replace=False) as tmp:
            save(value, tmp)
            (tmp / "key.json").write_text(json.dumps(key_parts, indent=1, sort_keys=True, default=str),
                                          encoding="utf-8")
    except OSError:
        pass  # a full disk or a concurrent writer: the value is still good, only not cached
    return value


def save_sequences(seqs: list[Sequence], folder: Path, meta: dict | None = None) -> None:
    """Store training sequences as flat numpy arrays plus row offsets."""
    folder = Path(folder)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.fromiter((t for s in seqs for t in s.input_ids), dtype=np.int64, count=int(offsets[-1]))
    labels = np.fromiter((t for s in seqs for t in s.labels), dtype=np.int64, count=int(offsets[-1]))
    pos = np.fromiter((t for s in seqs for t in s.position_ids), dtype=np.int64, count=int(offsets[-1]))
    target = labels != IGNORE_INDEX
    np.save(folder / "offsets.npy", offsets)
    np.save(folder / "input_ids.npy", ids.astype(np.int32))
    if np.array_equal(labels[target], ids[target]):  # the usual case: a label is the token or -100
        np.save(folder / "target.npy", target.astype(np.uint8))
    else:
        np.save(folder / "labels.npy", labels.astype(np.int32))
    np.save(folder / "position_ids.npy", pos.astype(np.uint16 if pos.size == 0 or pos.max() < 2**16 else np.int32))
    (folder / "meta.json").write_text(json.dumps(meta or {}, default=str), encoding="utf-8")


def load_sequences(folder: Path) -> tuple[list[Sequence], dict]:
    """(sequences, meta) as :func:`save_sequences` stored them."""
    folder = Path(folder)
    offsets = np.load(folder / "offsets.npy", allow_pickle=False)
    ids = np.load(folder / "input_ids.npy", allow_pickle=False).astype(np.int64)
    if (folder / "labels.npy").exists():
        labels = np.load(folder / "labels.npy", allow_pickle=False).astype(np.int64)
    else:
        labels = np.where(np.load(folder / "target.npy", allow_pickle=False).astype(bool), ids, IGNORE_INDEX)
    pos = np.load(folder / "position_ids.npy", allow_pickle=False).astype(np.int64)
    ids_l, labels_l, pos_l = ids.tolist(), labels.tolist(), pos.tolist()
    seqs = [Sequence(ids_l[a:b], labels_l[a:b], pos_l[a:b]) for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    return seqs, json.loads((folder / "meta.json").read_text(encoding="utf-8"))
