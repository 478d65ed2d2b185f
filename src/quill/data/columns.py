"""Source columns -> canonical record fields, configured (``data.columns``) or recognised by name.

Why a strict mapping: a run that silently trains on the wrong column (an index, a title) wastes hours,
so a missing column is an error naming the column asked for and the columns the file has.
"""
from __future__ import annotations

import re
from typing import Any

from quill.config import DataConfig
from quill.errors import DataError

# canonical field -> column names recognised without configuration (compared case- and separator-blind)
AUTO_COLUMNS: dict[str, list[str]] = {
    "text": ["text", "poem", "poemtext", "content", "body", "verse", "poetry", "line"],
    "title": ["title", "poemtitle"],
    "author": ["author", "poet", "poetname", "writer", "by"],
    "tags": ["tags", "themes", "theme", "topics", "topic", "categories", "category"],
    "conversation": ["conversation", "dialogue", "dialog"],
    "prompt": ["prompt", "instruction", "question", "query"],
    "completion": ["completion", "response", "output", "answer"],
    "messages": ["messages", "conversations", "chat"],
    "chosen": ["chosen", "preferred", "winner"],
    "rejected": ["rejected", "dispreferred", "loser"],
}
CANONICAL = tuple(AUTO_COLUMNS)


def _norm_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def map_columns(columns: list[str], data_cfg: DataConfig, where: str) -> dict[str, str]:
    """canonical field -> source column: ``data.columns`` first, then the names in :data:`AUTO_COLUMNS`.

    Fails (naming the missing column and the columns found) when the data kind's required fields
    are absent, because a run on the wrong column would otherwise train on nothing or on the index.
    """
    found = ", ".join(columns) or "(none)"
    mapping: dict[str, str] = {}
    for canon, column in data_cfg.columns.items():
        if canon not in CANONICAL:
            raise DataError(f"{where}: data.columns: unknown field '{canon}' (known: {', '.join(CANONICAL)})")
        if column not in columns:
            raise DataError(f"{where}: column '{column}' (data.columns.{canon}) not found; columns: {found}")
        mapping[canon] = column
    by_norm = {_norm_name(c): c for c in columns}
    taken = set(mapping.values())
    for canon, names in AUTO_COLUMNS.items():
        if canon in mapping:
            continue
        hit = next((by_norm[n] for n in names if n in by_norm and by_norm[n] not in taken), None)
        if hit is not None:
            mapping[canon] = hit
            taken.add(hit)
    if data_cfg.kind == "instructions":
        if not ({"conversation", "messages"} & set(mapping) or {"prompt", "completion"} <= set(mapping)):
            if "text" in mapping:  # a single text column of "User: … Assistant: …" strings
                mapping["conversation"] = mapping.pop("text")
            else:
                raise DataError(f"{where}: no instruction column: need 'conversation', 'messages' or "
                                f"'prompt'+'completion' (or set data.columns); columns: {found}")
    elif data_cfg.kind == "preferences":
        missing = [c for c in ("chosen", "rejected") if c not in mapping]
        if missing:
            raise DataError(f"{where}: no preference column '{missing[0]}': need 'chosen' and 'rejected' (and "
                            f"'prompt' unless both are message lists; or set data.columns); columns: {found}")
    elif "text" not in mapping:
        raise DataError(f"{where}: no poem text column (tried {', '.join(AUTO_COLUMNS['text'])}; "
                        f"set data.columns.text); columns: {found}")
    return mapping


def project(record: dict, mapping: dict[str, str]) -> dict:
    """One source record -> a row with canonical names; missing values (NaN, "") become None."""
    return {canon: plain(record.get(column)) for canon, column in mapping.items()}


def plain(value: Any) -> Any:
    """pandas/numpy/arrow values -> plain Python: NaN -> None, arrays -> lists."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
