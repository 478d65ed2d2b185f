"""Tokenizing preference records for a dpo stage: one :class:`Pair` of rows (chosen, rejected) per record.

Both rows start with the same prompt ids (the template's rendering of the prompt, label -100), followed by
the answer and the template's end-of-turn token, which carry labels (so the end of a poem is part of what is
preferred). Pairs are never packed: the loss compares whole sequences.

Too long (``max_prompt``, ``max_length``): the prompt keeps its tail (at most ``max_prompt`` tokens, and when
the answers need the room at most what ``template.encode_example`` keeps, half of ``max_length``), then the
answers keep their heads. Nothing is cut silently: ``truncated_prompt`` counts prompts cut, and
``truncated_end`` every answer that lost its end-of-turn token; a pair whose two rows end up identical is
skipped (``same_after_truncation``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from quill.data.encode import Encoded
from quill.data.pack import Example, Sequence
from quill.data.template import encode_text


@dataclass
class Pair:
    """The two rows of one preference pair, and the reference model's summed answer log-probs of each
    (filled in before training: ``train.dpo.reference_logps``)."""
    chosen: Sequence
    rejected: Sequence
    ref_chosen: float | None = None
    ref_rejected: float | None = None

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)

    @property
    def loss_tokens(self) -> int:
        """What the loop normalises a step's loss by: DPO's loss is a mean over pairs, so a pair counts 1."""
        return 1


def _row(ids: list[int], labels: list[int]) -> Sequence:
    seq = Sequence()
    seq.add(Example(ids, labels))
    return seq


def encode_pair(record: dict, tokenizer, template, max_length: int, max_prompt: int | None,
                counts: Counter) -> Pair | None:
    """One record -> a Pair, or None (counted in ``counts``) when it cannot carry a preference."""
    p_ids = template.encode_prompt(tokenizer, record["prompt"])
    eot = template.end_of_turn_id(tokenizer)
    answers = [encode_text(tokenizer, record[k]) + [eot] for k in ("chosen", "rejected")]
    keep_p = len(p_ids) if max_prompt is None else min(len(p_ids), max_prompt)
    longest = max(map(len, answers))
    if keep_p + longest > max_length:
        keep_p = min(keep_p, max(max_length - longest, max_length // 2))
    if keep_p < len(p_ids):
        counts["truncated_prompt"] += 1
        p_ids = p_ids[len(p_ids) - keep_p:]
    room = max_length - len(p_ids)
    for a in answers:
        if len(a) > room:
            counts["truncated_end"] += 1
    answers = [a[:room] for a in answers]
    if not p_ids or room < 1:
        counts["no_answer_token_fits"] += 1
        return None
    if answers[0] == answers[1]:
        counts["same_after_truncation"] += 1
        return None
    rows = [_row(p_ids + a, [-100] * len(p_ids) + a) for a in answers]
    return Pair(*rows)


def encode_pairs(records: list[dict], tokenizer, template, max_length: int, max_prompt: int | None = None
                 ) -> Encoded:
    """Every record of a split as a Pair; ``Encoded.skipped`` counts pairs left out, ``Encoded.truncated``
    the cuts (see the module docstring)."""
    counts: Counter = Counter()
    pairs = [p for p in (encode_pair(r, tokenizer, template, max_length, max_prompt, counts) for r in records)
             if p is not None]
    skipped = Counter({k: v for k, v in counts.items() if not k.startswith("truncated")})
    truncated = Counter({k: v for k, v in counts.items() if k.startswith("truncated")})
    return Encoded(pairs, skipped, len(pairs), truncated)
