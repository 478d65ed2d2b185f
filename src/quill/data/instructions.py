"""Turn instruction rows (``"User: … Assistant: …"`` strings, prompt/completion, messages) into records.

An instruction record is ``{"messages": [{"role", "content"}, ...]}`` whose last message is the
assistant's answer (the part that carries the loss), plus ``title``/``author`` when known.

The conversation parser generalises the reference's ``parse_example`` (split at ``User:`` and
``Assistant:``): role markers count at the start of a line (``User:``, ``Human:``, ``Assistant:``,
``System:``), so a turn may span many lines and a conversation may alternate several times. When no
line starts with ``Assistant:``, the first inline ``Assistant:`` splits a one-line pair
(``"User: hi Assistant: hello"``). A row that cannot become a valid conversation is skipped and
counted by reason, never dropped silently:

- ``no_roles``: no ``User:`` marker at all;        - ``no_user``: text before the first marker, or an
- ``no_assistant``: a user turn but no answer;       answer without a question first;
- ``bad_turn_order``: two user (or assistant) turns in a row;
- ``no_final_answer``: the conversation ends with a user turn;
- ``empty_prompt`` / ``empty_answer``: a marker with nothing after it;
- ``bad_messages``: a ``messages`` value that is not a list of {role, content} (JSON string allowed).
"""
from __future__ import annotations

import json
import re
from collections import Counter

_ROLE_NAMES = {"user": "user", "human": "user", "assistant": "assistant", "system": "system"}
_LINE_MARKER = re.compile(r"^[ \t]*(User|Human|Assistant|System|USER|HUMAN|ASSISTANT|SYSTEM)[ \t]*:[ \t]*",
                          re.MULTILINE)
_INLINE_ASSISTANT = re.compile(r"\s(Assistant|ASSISTANT)[ \t]*:[ \t]*")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "bot": "assistant", "model": "assistant", "system": "system"}


def parse_conversation(text: str) -> tuple[list[dict] | None, str | None]:
    """``"User: …\\nAssistant: …"`` -> (messages, None), or (None, reason) when it is not a valid pair."""
    text = re.sub(r"\r*\n|\r", "\n", text or "")
    marks = [(m.start(), m.end(), _ROLE_NAMES[m.group(1).lower()]) for m in _LINE_MARKER.finditer(text)]
    if marks and not any(role == "assistant" for *_, role in marks):
        inline = _INLINE_ASSISTANT.search(text, marks[0][1])
        if inline:
            marks.append((inline.start(), inline.end(), "assistant"))
            marks.sort()
    if not marks or not any(role == "user" for *_, role in marks):
        return None, "no_roles"
    if text[:marks[0][0]].strip():
        return None, "no_user"
    messages = []
    for i, (_, end, role) in enumerate(marks):
        stop = marks[i + 1][0] if i + 1 < len(marks) else len(text)
        messages.append({"role": role, "content": text[end:stop].strip()})
    return validate_messages(messages)


def validate_messages(messages: list[dict]) -> tuple[list[dict] | None, str | None]:
    """The rules every conversation obeys: optional system first, then user/assistant alternating,
    ending with a non-empty assistant answer. Returns (messages, None) or (None, reason)."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body or body[0]["role"] != "user":
        return None, "no_user" if any(m["role"] == "assistant" for m in body) else "no_roles"
    if not any(m["role"] == "assistant" for m in body):
        return None, "empty_prompt" if not body[0]["content"].strip() else "no_assistant"
    for prev, cur in zip(body, body[1:]):
        if prev["role"] == cur["role"] or cur["role"] == "system":
            return None, "bad_turn_order"
    if body[-1]["role"] != "assistant":
        return None, "no_final_answer"
    for m in body:
        if not m["content"].strip():
            return None, "empty_prompt" if m["role"] == "user" else "empty_answer"
    return messages, None


def parse_messages(value: object) -> tuple[list[dict] | None, str | None]:
    """OpenAI-style ``[{role, content}]`` (or ShareGPT ``[{from, value}]``), possibly as a JSON string."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: a hostile, deeply nested value
            return None, "bad_messages"
    if not isinstance(value, list) or not value:
        return None, "bad_messages"
    messages = []
    for item in value:
        if not isinstance(item, dict):
            return None, "bad_messages"
        role = item.get("role", item.get("from", ""))
        role = role.strip().lower() if isinstance(role, str) else None  # never str() a hostile nested value
        content = item.get("content", item.get("value"))
        if role not in _SHAREGPT_ROLES or not isinstance(content, str):
            return None, "bad_messages"
        messages.append({"role": _SHAREGPT_ROLES[role], "content": content.strip()})
    return validate_messages(messages)


def row_to_instruction(row: dict) -> tuple[dict | None, str | None]:
    """One canonical row -> (instruction record, None) or (None, reason). Columns tried in this order:
    ``messages``, then ``prompt`` + ``completion``, then ``conversation``."""
    if row.get("messages") is not None:
        messages, reason = parse_messages(row["messages"])
    elif "prompt" in row and "completion" in row:
        prompt, completion = row.get("prompt"), row.get("completion")
        if not isinstance(prompt, str) or not prompt.strip():
            messages, reason = None, "empty_prompt"
        elif not isinstance(completion, str) or not completion.strip():
            messages, reason = None, "empty_answer"
        else:
            messages, reason = [{"role": "user", "content": prompt.strip()},
                                {"role": "assistant", "content": completion.strip()}], None
    elif row.get("conversation") is not None:
        messages, reason = parse_conversation(str(row["conversation"]))
    else:
        return None, "empty_text"
    if messages is None:
        return None, reason
    record: dict = {"messages": messages}
    for key in ("title", "author"):
        if isinstance(row.get(key), str):
            record[key] = row[key]
    return record, None


def parse_rows(rows: list[dict], parse=row_to_instruction) -> tuple[list[dict], Counter]:
    """Parse every row with ``parse`` (row -> (record, None) or (None, reason)); returns (records, skipped
    by reason). Instruction rows by default; ``preferences.rows_to_preferences`` passes its own parser."""
    records, skipped = [], Counter()
    for row in rows:
        record, reason = parse(row)
        if record is None:
            skipped[reason] += 1
        else:
            records.append(record)
    return records, skipped


def rows_to_instructions(rows: list[dict]) -> tuple[list[dict], Counter]:
    """Parse every row; returns (records, skipped by reason)."""
    return parse_rows(rows)
