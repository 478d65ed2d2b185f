"""Did the poet do what was asked: line count, form, topic.

The checks come with each suite prompt (``suite_v1.json``: ``{"form", "lines", "topic"}``); a check
that a prompt does not ask for is None, so aggregates average only over prompts that asked.
"""
from __future__ import annotations

from quill.verse.form import end_words, poem_lines
from quill.verse.phonetics import line_syllables, rhymes, words

HAIKU_SYLLABLES = (5, 7, 5)
HAIKU_SLACK = 1            # syllable counts are fuzzy (fallback estimator, elisions): +-1 per line
COUPLET_SHARE = 0.75       # share of line pairs (1-2, 3-4, ...) that must rhyme for "couplets"
FORM_LINES = {"haiku": 3, "sonnet": 14, "quatrain": 4, "limerick": 5}
FORMS = sorted([*FORM_LINES, "couplets", "free"])


def form_met(text: str, form: str) -> bool | None:
    """Whether the poem has the requested form; None for forms without a checkable shape (free verse).

    haiku: 3 lines of 5-7-5 syllables (+-1 each); sonnet: 14 lines; quatrain: 4 lines (rhyme not
    required: many quatrains rhyme only ABCB); limerick: 5 lines rhyming AABBA; couplets: an even
    number (>= 2) of lines and >= 75% of the pairs rhyme.
    """
    lines = poem_lines(text)
    if form == "free":
        return None
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r} (known: {', '.join(FORMS)})")
    if form in FORM_LINES and len(lines) != FORM_LINES[form]:
        return False
    if form == "haiku":
        return all(abs(line_syllables(ln) - want) <= HAIKU_SLACK for ln, want in zip(lines, HAIKU_SYLLABLES))
    if form == "limerick":
        e = end_words(text)
        return rhymes(e[0], e[1]) and (rhymes(e[1], e[4]) or rhymes(e[0], e[4])) and rhymes(e[2], e[3])
    if form == "couplets":
        if len(lines) < 2 or len(lines) % 2:
            return False
        e = end_words(text)
        pairs = [rhymes(e[i], e[i + 1]) for i in range(0, len(e), 2)]
        return sum(pairs) / len(pairs) >= COUPLET_SHARE
    return True


_SUFFIXES = ("ing", "ed", "es", "s", "ly", "y", "er")


def stem(word: str) -> str:
    """Crude suffix stripping (no stemmer library in the dependencies): ``waves`` / ``waving`` -> ``wav``.

    Only used to match topic words loosely; it keeps at least 3 letters so ``sea`` stays ``sea``.
    """
    w = word.lower()
    for suf in _SUFFIXES:
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            w = w[:-len(suf)]
            break
    if w.endswith("e") and len(w) > 3:
        w = w[:-1]
    return w


def topic_share(text: str, topic: list[str]) -> float | None:
    """Share of topic words whose stem starts some word of the poem (``moon`` matches ``moonlight``)."""
    if not topic:
        return None
    stems = {stem(w) for w in words(text)}
    found = 0
    for t in topic:
        st = stem(t)
        found += any(s.startswith(st) for s in stems)
    return found / len(topic)


def adherence(text: str, checks: dict | None) -> dict:
    """``lines_ok``, ``form_ok``, ``topic`` for one sample against its prompt's checks."""
    checks = checks or {}
    want = checks.get("lines")
    form = checks.get("form")
    return {
        "lines_ok": None if want is None else len(poem_lines(text)) == int(want),
        "form_ok": None if not form else form_met(text, form),
        "topic": topic_share(text, checks.get("topic") or []),
    }
