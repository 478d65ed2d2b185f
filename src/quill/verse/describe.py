"""What a poem *is*, measured: its rhyme letters and scheme, its dominant meter, its named form.

Data synthesis asks for exactly what this module finds (a prompt never promises a rhyme, meter or form
the answer lacks), so every definition here is built on the same checks the evaluation scores with
(:func:`quill.verse.adherence.form_met`, :func:`quill.verse.phonetics.rhymes`,
:func:`quill.verse.form.line_meters`): a poem described as "couplets" passes ``form_met(.., "couplets")``,
one described as a limerick passes ``form_met(.., "limerick")``, and so on.
"""
from __future__ import annotations

import statistics
import string

from quill.verse.adherence import COUPLET_SHARE, form_met
from quill.verse.form import METERS, end_words, line_meters, poem_lines, stanzas
from quill.verse.phonetics import line_stresses, line_syllables, rhymes

LOOK_BACK = 4              # a rhyme is looked for among the 4 lines before (ABBA's A is 3 lines back)
UNRHYMED_SHARE = 0.2       # below this share of rhymed lines a poem is "unrhymed" (chance rhymes happen)
QUATRAIN_SHARE = 0.75      # share of quatrains that must have the scheme's shape (as COUPLET_SHARE)
METER_SHARE = 0.6          # share of scannable lines that must fit the foot (and the line length)
SONNET_RHYMED = 10         # of 14 lines, at least this many rhyme where a sonnet's scheme says
MIN_SCANNABLE = 4          # syllables: as form.MIN_SCANNABLE
FEET_NAMES = {1: "monometer", 2: "dimeter", 3: "trimeter", 4: "tetrameter", 5: "pentameter",
              6: "hexameter", 7: "heptameter"}
SCHEMES = ("couplets", "ABAB", "ABBA", "ABCB", "AABBA", "unrhymed")
FORMS = ("sonnet", "haiku", "limerick", "quatrain", "couplets")
_LETTERS = string.ascii_uppercase + string.ascii_lowercase + string.digits


def rhyme_letters(text: str) -> str:
    """One letter per line: the letter of the nearest earlier line (at most LOOK_BACK back) whose end
    word rhymes with this one's, else a new letter. Couplets give "AABBCC", alternate rhyme "ABAB".
    Past 62 distinct sounds the letters run out and "*" stands for any further new one."""
    ends = end_words(text)
    letters: list[str] = []
    fresh = 0
    for i, word in enumerate(ends):
        for j in range(i - 1, max(-1, i - 1 - LOOK_BACK), -1):
            if rhymes(word, ends[j]):
                letters.append(letters[j])
                break
        else:
            letters.append(_LETTERS[fresh] if fresh < len(_LETTERS) else "*")
            fresh += 1
    return "".join(letters)


def rhymed_share(text: str) -> float | None:
    """Share of lines whose end word rhymes with another line's within LOOK_BACK lines either way."""
    ends = end_words(text)
    if len(ends) < 2:
        return None
    rhymed = [any(rhymes(w, ends[j]) for j in range(max(0, i - LOOK_BACK), min(len(ends), i + LOOK_BACK + 1))
                  if j != i) for i, w in enumerate(ends)]
    return sum(rhymed) / len(rhymed)


def _quatrains_shaped(ends: list[str], pairs: tuple[tuple[int, int], ...], share: float = QUATRAIN_SHARE) -> bool:
    """Whether >= ``share`` of the quatrains (lines 0-3, 4-7, ...) rhyme at every offset pair in ``pairs``."""
    quads = [ends[i:i + 4] for i in range(0, len(ends), 4)]
    ok = [all(rhymes(q[a], q[b]) for a, b in pairs) for q in quads]
    return sum(ok) / len(ok) >= share


def scheme_name(text: str) -> str | None:
    """The rhyme scheme by name, or None when it is mixed or irregular.

    "AABBA" (5 lines, exactly when ``form_met(.., "limerick")``), "couplets" (exactly when
    ``form_met(.., "couplets")``: an even number of lines, >= 75% of the pairs 1-2, 3-4, .. rhyme),
    "ABAB" / "ABBA" / "ABCB" (4k lines, >= 75% of the quatrains have that shape; ABAB is tried before
    ABCB, which it also satisfies), "unrhymed" (fewer than 20% of the lines rhyme with a line within 4).
    """
    ends = end_words(text)
    n = len(ends)
    if n < 2:
        return None
    if n == 5 and form_met(text, "limerick"):
        return "AABBA"
    if form_met(text, "couplets"):
        return "couplets"
    if n % 4 == 0:
        if _quatrains_shaped(ends, ((0, 2), (1, 3))):
            return "ABAB"
        if _quatrains_shaped(ends, ((0, 3), (1, 2))):
            return "ABBA"
        if _quatrains_shaped(ends, ((1, 3),)) and not any(
                rhymes(ends[i], ends[i + 2]) for i in range(0, n, 4)):
            return "ABCB"
    if (rhymed_share(text) or 0.0) < UNRHYMED_SHARE:
        return "unrhymed"
    return None


def dominant_meter(text: str) -> str | None:
    """"iambic pentameter", "trochaic tetrameter", .. or None when no meter dominates.

    The foot is the one that >= 60% of the scannable lines (>= 4 syllables) fit (``form.line_meters``),
    the number of feet comes from the median syllable count (2 a foot for iambs/trochees, 3 for
    anapests/dactyls, rounded half up) and >= 60% of those lines must also have about that length
    (+-1 syllable, +-2 for three-syllable feet: catalexis, feminine endings). Lines made only of
    monosyllables fit every foot, so among feet that tie the length decides (10 syllables are 5 iambs,
    not 3.3 anapests), then the order of ``METERS`` (iambic first, the commonest).
    Needs at least two scannable lines, and at least half of all lines scannable.
    """
    lines = poem_lines(text)
    scannable = [ln for ln in lines if len(line_stresses(ln)) >= MIN_SCANNABLE]
    if len(scannable) < 2 or len(scannable) * 2 < len(lines):
        return None
    fits = [line_meters(ln) for ln in scannable]
    counts = [line_syllables(ln) for ln in scannable]
    median = statistics.median(counts)
    best: tuple | None = None
    for order, (name, foot) in enumerate(METERS.items()):
        share = sum(name in f for f in fits) / len(fits)
        feet = int(median / len(foot) + 0.5)
        if share < METER_SHARE or feet not in FEET_NAMES:
            continue
        slack = len(foot) - 1
        near = sum(abs(c - feet * len(foot)) <= slack for c in counts) / len(counts)
        if near < METER_SHARE:
            continue
        misfit = abs(median - feet * len(foot))
        score = (share, -misfit, -order)
        if best is None or score > best[0]:
            best = (score, f"{name} {FEET_NAMES[feet]}")
    return best[1] if best else None


# a sonnet's rhyme, as pairs of line indices that should rhyme (Shakespearean; Petrarchan octave)
_SHAKESPEAREAN = ((0, 2), (1, 3), (4, 6), (5, 7), (8, 10), (9, 11), (12, 13))
_PETRARCHAN_OCTAVE = ((0, 3), (1, 2), (4, 7), (5, 6), (0, 4), (1, 5))


def _rhymed_as(ends: list[str], pairs) -> set[int]:
    return {i for a, b in pairs if rhymes(ends[a], ends[b]) for i in (a, b)}


def sonnet_like(text: str) -> bool:
    """14 lines of which >= 10 rhyme where a Shakespearean (ABAB CDCD EFEF GG) or a Petrarchan
    (ABBAABBA + a sestet whose lines rhyme among themselves) scheme puts a rhyme."""
    ends = end_words(text)
    if len(ends) != 14:
        return False
    if len(_rhymed_as(ends, _SHAKESPEAREAN)) >= SONNET_RHYMED:
        return True
    sestet = {i for i in range(8, 14) if any(rhymes(ends[i], ends[j]) for j in range(8, 14) if j != i)}
    return len(_rhymed_as(ends, _PETRARCHAN_OCTAVE) | sestet) >= SONNET_RHYMED


def named_form(text: str, lines: int | None = None, scheme: str | None = None) -> str | None:
    """sonnet, haiku, limerick, quatrain, couplets (in that order of precedence) or None; each one
    also passes ``form_met`` for that form."""
    n = len(poem_lines(text)) if lines is None else lines
    if n == 14 and sonnet_like(text):
        return "sonnet"
    if n == 3 and form_met(text, "haiku"):
        return "haiku"
    if n == 5 and form_met(text, "limerick"):
        return "limerick"
    if n == 4:
        return "quatrain"
    if (scheme_name(text) if scheme is None else scheme) == "couplets":
        return "couplets"
    return None


def describe(text: str) -> dict:
    """``{"lines", "stanzas", "scheme", "meter", "syllables", "form", "letters"}`` for one poem."""
    lines = poem_lines(text)
    scheme = scheme_name(text)
    return {"lines": len(lines), "stanzas": len(stanzas(text)), "scheme": scheme, "meter": dominant_meter(text),
            "syllables": [line_syllables(ln) for ln in lines],
            "form": named_form(text, len(lines), scheme), "letters": rhyme_letters(text)}


__all__ = ["rhyme_letters", "rhymed_share", "scheme_name", "dominant_meter", "sonnet_like", "named_form",
           "describe", "SCHEMES", "FORMS", "FEET_NAMES", "COUPLET_SHARE"]
