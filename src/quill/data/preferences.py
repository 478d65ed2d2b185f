"""Preference rows (``prompt``, ``chosen``, ``rejected``) -> preference records, cleaned, with their keys.

A preference record is ``{"prompt": [{"role", "content"}, ...], "chosen": str, "rejected": str}``: the
conversation up to the answer (ending with a user turn), and the two answers' texts. Rows come in the
usual layouts (TRL's, the hub's):

- strings: ``prompt`` the user's message, ``chosen`` / ``rejected`` the answers;
- message lists (OpenAI style): ``prompt`` a list of messages, ``chosen`` / ``rejected`` lists holding the
  assistant message; without a ``prompt`` column, both lists hold the whole conversation and the prompt is
  their shared head (TRL's "implicit prompt").

A row that cannot become a pair is skipped and counted by reason, never dropped silently:
``missing_prompt`` / ``missing_chosen`` / ``missing_rejected`` (no value), ``bad_messages`` (a list that is
not {role, content} messages ending with the assistant's answer), ``prompt_mismatch`` (implicit prompts
that differ), ``same_answers`` (chosen == rejected after normalising), and the conversation rules of
``instructions.validate_messages`` (``empty_prompt``, ``empty_answer``, ``bad_turn_order`` ...).
"""
from __future__ import annotations

import json
from collections import Counter

from quill.config import CleanConfig
from quill.data.clean import CleanResult, normalise_text, strip_special, text_key
from quill.data.instructions import parse_rows, validate_messages

_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
          "model": "assistant", "system": "system"}


def _messages(value: object) -> list[dict] | None:
    """A list of {role, content} (or {from, value}) messages, possibly as a JSON string; None if it is not one."""
    if isinstance(value, str):
        if not value.lstrip().startswith("["):
            return None
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return None
    if not isinstance(value, list) or not value:
        return None
    out = []
    for item in value:
        if not isinstance(item, dict):
            return None
        role, content = item.get("role", item.get("from")), item.get("content", item.get("value"))
        content = "" if content is None else content  # readers turn an empty string into None
        if not isinstance(role, str) or role.strip().lower() not in _ROLES or not isinstance(content, str):
            return None
        out.append({"role": _ROLES[role.strip().lower()], "content": content.strip()})
    return out


def _answer(value: object) -> tuple[list[dict], str | None, bool]:
    """(messages before the answer, the answer text or None, well formed) of a chosen/rejected value."""
    if isinstance(value, str) and not value.lstrip().startswith("["):
        return [], value.strip(), True
    messages = _messages(value)
    if messages is None or messages[-1]["role"] != "assistant":
        return [], None, False
    return messages[:-1], messages[-1]["content"], True


def row_to_preference(row: dict) -> tuple[dict | None, str | None]:
    """One canonical row -> (preference record, None) or (None, reason); see the module docstring."""
    for name in ("chosen", "rejected"):
        if row.get(name) is None:
            return None, f"missing_{name}"
    (head_c, chosen, ok_c), (head_r, rejected, ok_r) = _answer(row["chosen"]), _answer(row["rejected"])
    if not (ok_c and ok_r):
        return None, "bad_messages"
    raw_prompt = row.get("prompt")
    if raw_prompt is None:
        if not head_c and not head_r:
            return None, "missing_prompt"
        if head_c != head_r:
            return None, "prompt_mismatch"
        prompt = head_c
    elif head_c or head_r:  # an explicit prompt and answers that repeat a conversation: ambiguous
        return None, "bad_messages"
    elif isinstance(raw_prompt, str) and not raw_prompt.lstrip().startswith("["):
        prompt = [{"role": "user", "content": raw_prompt.strip()}]
    else:
        prompt = _messages(raw_prompt)
        if prompt is None:
            return None, "bad_messages"
    for answer in (chosen, rejected):
        _, reason = validate_messages(prompt + [{"role": "assistant", "content": answer}])
        if reason:
            return None, reason
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, None


def rows_to_preferences(rows: list[dict]) -> tuple[list[dict], Counter]:
    """Parse every row; returns (records, skipped by reason)."""
    return parse_rows(rows, row_to_preference)


def clean_preferences(records: list[dict], cfg: CleanConfig) -> CleanResult:
    """Normalise every text as instruction messages are (``clean.clean_instructions``); ``min_chars`` /
    ``max_chars`` apply to both answers; a pair whose answers are equal once normalised is ``same_answers``."""
    result = CleanResult([])

    def norm(text: str) -> str:
        if cfg.strip_special_tokens:
            text, n = strip_special(text)
            result.special_tokens_removed += n
        return normalise_text(text)

    for rec in records:
        prompt = [{"role": m["role"], "content": norm(m["content"])} for m in rec["prompt"]]
        prompt = [m for m in prompt if m["content"] or m["role"] != "system"]
        chosen, rejected = norm(rec["chosen"]), norm(rec["rejected"])
        reason = next((r for r in map(lambda a: validate_messages(prompt + [{"role": "assistant", "content": a}])[1],
                                      (chosen, rejected)) if r), None)
        if reason is None:
            reason = next(filter(None, (_length_problem(a, cfg) for a in (chosen, rejected))), None)
        if reason is None and chosen == rejected:
            reason = "same_answers"
        if reason:
            result.dropped[reason] += 1
            continue
        result.records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return result


def _length_problem(text: str, cfg: CleanConfig) -> str | None:
    if len(text) < cfg.min_chars:
        return "too_short"
    if cfg.max_chars is not None and len(text) > cfg.max_chars:
        return "too_long"
    return None


def prompt_key(record: dict) -> str:
    return "\x1f".join(f"{m['role']}:{text_key(m['content'])}" for m in record["prompt"])


def preference_key(record: dict) -> str:
    """Duplicate key: the prompt and both answers, normalised (the same answers for another prompt differ)."""
    return f"{prompt_key(record)}\x1echosen:{text_key(record['chosen'])}\x1erejected:{text_key(record['rejected'])}"


def preference_group(record: dict) -> str:
    """What stays in one split: every pair of one prompt (so a held-out prompt is never trained on)."""
    return "prompt:" + prompt_key(record)


def preference_texts(record: dict) -> list[str]:
    """The verse in a pair, for the cross-stage held-out set: both answers and any poem quoted in the
    prompt (its lines after the first, as for instructions: "Continue this poem:\\n…")."""
    return [record["chosen"], record["rejected"], *(m["content"].partition("\n")[2] for m in record["prompt"])]


def preference_to_instruction(record: dict) -> dict:
    """The pair's chosen side as an instruction record (``quill eval``'s loss on a dpo stage's splits)."""
    return {"messages": record["prompt"] + [{"role": "assistant", "content": record["chosen"]}]}
