"""Word-level behaviour of a sample: diversity, repetition and loops, stopping.

These catch the classic failures of a small fine-tuned LM: saying the same thing again
(distinct-n falls), looping ("the sea, the sea, the sea"), and never emitting EOS.
"""
from __future__ import annotations

from collections import Counter

from quill.verse.form import poem_lines
from quill.verse.phonetics import words

LOOP_REPEATS = 3       # a span (or a line) seen this many times in a row / in total is a loop
LOOP_MAX_SPAN = 8      # longest word span checked for back-to-back repetition


def distinct_n(tokens: list[str], n: int) -> float | None:
    """Unique n-grams / all n-grams (Li et al. 2016); None when the text has no n-gram."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def diversity(text: str) -> dict:
    w = words(text)
    return {"distinct_1": distinct_n(w, 1), "distinct_2": distinct_n(w, 2)}


def _normal_line(line: str) -> str:
    return " ".join(words(line))


def has_span_loop(tokens: list[str], repeats: int = LOOP_REPEATS, max_span: int = LOOP_MAX_SPAN) -> bool:
    """True when some span of 1..max_span words occurs ``repeats`` times back to back."""
    for n in range(1, max_span + 1):
        for i in range(len(tokens) - n * repeats + 1):
            span = tokens[i:i + n]
            if all(tokens[i + k * n:i + (k + 1) * n] == span for k in range(1, repeats)):
                return True
    return False


def repetition(text: str) -> dict:
    """``repeated_lines``: share of lines that repeat an earlier line (case and punctuation ignored).
    ``loop``: a line occurs >= 3 times, or a word span repeats 3 times back to back.

    Refrains (villanelles, ballads) also trip ``loop``; the human reference shows how often real
    poems do, which is the rate to compare against rather than zero.
    """
    lines = [ln for ln in (_normal_line(x) for x in poem_lines(text)) if ln]
    counts = Counter(lines)
    repeated = sum(c - 1 for c in counts.values())
    loop = any(c >= LOOP_REPEATS for c in counts.values()) or has_span_loop(words(text))
    return {"repeated_lines": repeated / len(lines) if lines else 0.0, "loop": loop}


def stopping(finished: bool | None) -> dict:
    """``stopped``: the sample ended with EOS / end-of-turn before the token limit (None: unknown, e.g. human)."""
    return {"stopped": None if finished is None else bool(finished)}
