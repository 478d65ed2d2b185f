"""Normalise rows into clean poem / instruction records, and count every row that is dropped.

Why each rule:
- line endings (``\\r\\r\\n`` in the Poetry Foundation CSV, ``\\r\\n``, ``\\r``) become ``\\n`` so the
  tokenizer sees one newline token per line break, whatever machine wrote the file;
- trailing spaces and non-breaking spaces are padding, not poetry; *leading* indentation is kept
  (poets indent on purpose) except the indentation common to every line (file padding);
- a single blank line is a stanza break and is kept; runs of blank lines become one (a model
  trained on 4 empty lines learns to emit them); blank lines around the poem are removed;
- titles and authors are one line: inner whitespace collapsed, padding stripped;
- tokenizer control strings (``<|endoftext|>``, ``<|im_start|>`` …) in the *data* would teach the model
  to end or restructure turns at random; they are removed and counted (``special_tokens_removed``).
Duplicates are dropped in ``split.py`` (with :func:`text_key`) because the same key decides the split.
"""
from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass, field

from quill.config import CleanConfig

# <|anything|> plus the bare control strings common in Llama/Mistral-era tokenizers
SPECIAL_TOKEN_RE = re.compile(r"<\|[^<>|\n]{1,64}\|>|</?s>|<(?:unk|pad|eos|bos|endoftext)>|\[/?INST\]|<</?SYS>>")
_NEWLINES = re.compile(r"\r*\n|\r")
_SPACE_MAP = {"\u00a0": " ", "\u2007": " ", "\u202f": " ", "\u2009": " ", "\u3000": " ", "\u200b": "",
              "\ufeff": "", "\u2028": "\n", "\u2029": "\n"}
_SPACE_CHARS = tuple(_SPACE_MAP)
_SPACE_LIKE = str.maketrans(_SPACE_MAP)
_BLANK_RUNS = re.compile(r"\n{3,}")
# punctuation (ASCII and the typographic kinds poems use) is ignored by the duplicate key
_KEY_PUNCT = str.maketrans({c: " " for c in string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014\u2026"
                            "\u00ab\u00bb\u00a1\u00bf\u00b7"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass
class CleanResult:
    """Kept records, drop counts by reason, and how many control strings were cut out of kept and dropped text."""
    records: list[dict]
    dropped: Counter = field(default_factory=Counter)
    special_tokens_removed: int = 0


# --------------------------------------------------------------------------- strings
def normalise_text(text: str) -> str:
    """Multi-line text: ``\\n`` line ends, no padding, stanza breaks kept (see the module docstring).

    Fast paths skip regexes that would find nothing: 50 M characters of corpus take ~1.5 s, not 8.
    """
    if "\r" in text:
        text = _NEWLINES.sub("\n", text)
    if any(c in text for c in _SPACE_CHARS):
        text = text.translate(_SPACE_LIKE)
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    text = "\n".join(map(str.rstrip, text.split("\n")))
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    text = text.strip("\n")
    if text[:1] in (" ", "\t"):  # the first line is indented: maybe every line is (file padding)
        lines = text.split("\n")
        common = min(len(ln) - len(ln.lstrip()) for ln in lines if ln)
        text = "\n".join(ln[common:] for ln in lines)
    return text


def normalise_field(value: object) -> str | None:
    """One-line metadata (title, author): whitespace collapsed; empty -> None."""
    if value is None:
        return None
    text = " ".join(str(value).translate(_SPACE_LIKE).split())
    return text or None


def parse_tags(value: object) -> list[str]:
    """Tags from a list, a JSON list string, or a ``,``/``;``/``|``-separated string; order kept, no repeats."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                value = text.strip("[]").replace("'", "").split(",")
        else:
            value = re.split(r"[,;|]", text)
    if not isinstance(value, (list, tuple)):
        value = [value]
    # a tag is a scalar: nested lists/objects (a hostile JSON string can nest hundreds deep) are not tags
    tags = [normalise_field(v) for v in value if not isinstance(v, (list, tuple, dict))]
    return list(dict.fromkeys(t for t in tags if t))


def strip_special(text: str) -> tuple[str, int]:
    """Remove tokenizer control strings; returns the text and how many were removed."""
    if "<" not in text and "INST]" not in text:  # fast path: nothing to find
        return text, 0
    return SPECIAL_TOKEN_RE.subn("", text)


def text_key(text: str) -> str:
    """Duplicate key: case, punctuation and spacing ignored, so re-typeset copies of a poem match."""
    return " ".join(text.casefold().translate(_KEY_PUNCT).split())


def instruction_key(record: dict) -> str:
    """Duplicate key of an instruction pair: every message (prompt(s) and answer), normalised."""
    return "\x1f".join(f"{m['role']}:{text_key(m['content'])}" for m in record["messages"])


def instruction_group(record: dict) -> str:
    """What must stay in one split: the poem an instruction answers with. Author + title when known,
    else the answer text without an introduction line ending in ':' ("Sure, here's a poem about X:")."""
    if record.get("author") and record.get("title"):
        return f"poem:{text_key(record['author'])}|{text_key(record['title'])}"
    answer = record["messages"][-1]["content"]
    first, _, rest = answer.partition("\n")
    if rest.strip() and first.rstrip().endswith(":"):
        answer = rest
    return "answer:" + text_key(answer)


# --------------------------------------------------------------------------- records
def clean_poems(rows: list[dict], cfg: CleanConfig) -> CleanResult:
    """Canonical rows -> poem records ``{text, title, author, tags}``; empty/short/long ones dropped and counted."""
    result = CleanResult([])
    for row in rows:
        raw = row.get("text")
        if isinstance(raw, list):  # a poem stored as a list of lines
            raw = "\n".join(str(x) for x in raw if x is not None)
        text, n = _maybe_strip(raw, cfg)
        title, n_title = _maybe_strip(row.get("title"), cfg)
        result.special_tokens_removed += n + n_title
        text = normalise_text(text or "")
        reason = _length_problem(text, cfg)
        if reason:
            result.dropped[reason] += 1
            continue
        result.records.append({"text": text, "title": normalise_field(title), "author": normalise_field(
            row.get("author")), "tags": parse_tags(row.get("tags"))})
    return result


def clean_instructions(records: list[dict], cfg: CleanConfig) -> CleanResult:
    """Normalise every message; min/max chars apply to the final answer (the text that carries the loss)."""
    result = CleanResult([])
    for rec in records:
        messages = []
        for m in rec["messages"]:
            content, n = _maybe_strip(m["content"], cfg)
            result.special_tokens_removed += n
            messages.append({"role": m["role"], "content": normalise_text(content or "")})
        empty = next((m for m in messages if not m["content"] and m["role"] != "system"), None)
        if empty is not None:
            result.dropped["empty_prompt" if empty["role"] == "user" else "empty_answer"] += 1
            continue
        reason = _length_problem(messages[-1]["content"], cfg)
        if reason:
            result.dropped[reason] += 1
            continue
        out = {"messages": [m for m in messages if m["content"] or m["role"] != "system"]}
        for key in ("title", "author"):
            if rec.get(key) is not None:
                out[key] = normalise_field(rec[key])
        result.records.append(out)
    return result


def _maybe_strip(value: object, cfg: CleanConfig) -> tuple[str | None, int]:
    if value is None:
        return None, 0
    return strip_special(str(value)) if cfg.strip_special_tokens else (str(value), 0)


def _length_problem(text: str, cfg: CleanConfig) -> str | None:
    if not text.strip():
        return "empty_text"
    if len(text) < cfg.min_chars:
        return "too_short"
    if cfg.max_chars is not None and len(text) > cfg.max_chars:
        return "too_long"
    return None
