"""Shape and sound of one poem: structure, rhyme, meter.

A poem here is plain text: lines separated by ``\\n``, stanzas by blank lines. Each function takes
the poem string and returns plain numbers, so the same code scores model samples and human poems.
"""
from __future__ import annotations

import statistics

from quill.verse.phonetics import (FLEXIBLE, STRESSED, UNSTRESSED, line_stresses, line_syllables,
                                              rhymes, words)


def poem_lines(text: str) -> list[str]:
    """Non-empty lines, stripped. Blank lines separate stanzas and are not lines of verse."""
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def stanzas(text: str) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for ln in text.splitlines():
        if ln.strip():
            out[-1].append(ln.strip())
        elif out[-1]:
            out.append([])
    return [s for s in out if s]


def structure(text: str) -> dict:
    """Lines, stanzas, words, words per line, syllables per line (mean and population std)."""
    lines = poem_lines(text)
    syl = [line_syllables(ln) for ln in lines]
    wpl = [len(words(ln)) for ln in lines]
    return {
        "lines": len(lines),
        "stanzas": len(stanzas(text)),
        "words": sum(wpl),
        "words_per_line": statistics.fmean(wpl) if wpl else 0.0,
        "syllables_per_line": statistics.fmean(syl) if syl else 0.0,
        "syllables_per_line_std": statistics.pstdev(syl) if len(syl) > 1 else 0.0,
    }


def end_words(text: str) -> list[str]:
    """The last word of each line ('' for a line with no words, which then rhymes with nothing)."""
    out = []
    for ln in poem_lines(text):
        w = words(ln)
        out.append(w[-1] if w else "")
    return out


def rhyme(text: str) -> dict:
    """Rhyme between line ends.

    ``rhyme_adjacent`` / ``rhyme_alternate``: share of line pairs (i, i+1) / (i, i+2) whose end words
    rhyme; ``rhyme_pairs``: the same over both kinds pooled (None when there is no pair).
    Pair shares punish every scheme a little (AABB has no rhyming alternate pairs), so
    ``rhymed_lines`` — share of lines whose end rhymes with a line up to two away — is the
    scheme-neutral headline: 1.0 for AABB, ABAB and ABBA alike, 0.0 for unrhymed verse.
    """
    ends = end_words(text)
    adj = [rhymes(ends[i], ends[i + 1]) for i in range(len(ends) - 1)]
    alt = [rhymes(ends[i], ends[i + 2]) for i in range(len(ends) - 2)]
    rhymed = [any(rhymes(ends[i], ends[j]) for j in range(max(0, i - 2), min(len(ends), i + 3)) if j != i)
              for i in range(len(ends))]

    def share(xs):
        return sum(xs) / len(xs) if xs else None

    return {"rhyme_adjacent": share(adj), "rhyme_alternate": share(alt), "rhyme_pairs": share(adj + alt),
            "rhymed_lines": share(rhymed) if len(ends) > 1 else None}


# Feet as stress templates; a line is compared with the template repeated to its length.
METERS = {"iambic": "u/", "trochaic": "/u", "anapestic": "uu/", "dactylic": "/uu"}
METER_TOLERANCE = 0.8      # share of fixed syllables that must agree with the template
MIN_SCANNABLE = 4          # shorter lines fit anything and say nothing about meter


def meter_fit(stresses: str, foot: str) -> float:
    """Share of the line's FIXED syllables (stressed/unstressed, not flexible) that agree with ``foot``
    repeated from the line's first syllable.

    Counting flexible syllables as agreement would let the filler of monosyllables vote for every
    meter at once (a pentameter line would also "fit" dactyls); only the polysyllables' stresses
    carry evidence. A line with no fixed syllable agrees with everything (1.0).
    """
    template = (foot * (len(stresses) // len(foot) + 1))[:len(stresses)]
    fixed = [(s, t) for s, t in zip(stresses, template) if s != FLEXIBLE]
    if not fixed:
        return 1.0
    return sum(s == t for s, t in fixed) / len(fixed)


def line_meters(line: str) -> list[str]:
    """Meters the line fits (agreement >= METER_TOLERANCE); [] for unscannable short lines."""
    st = line_stresses(line)
    if len(st) < MIN_SCANNABLE:
        return []
    return [name for name, foot in METERS.items() if meter_fit(st, foot) >= METER_TOLERANCE]


def meter(text: str) -> dict:
    """Share of scannable lines (>= 4 syllables) that fit iambic meter, and that fit any of the meters.

    Monosyllables and secondary stresses are flexible (see phonetics.stress_pattern) and a line
    fits when >= 80% of its fixed syllables agree (see meter_fit), which admits the usual substitutions (an initial
    trochee, a feminine ending) while polysyllables with fixed stress still decide. A line of
    only monosyllables fits every meter: that is honest — it can be read in any of them.
    None when no line is long enough to scan.
    """
    scannable = [ln for ln in poem_lines(text) if len(line_stresses(ln)) >= MIN_SCANNABLE]
    if not scannable:
        return {"meter_iambic": None, "meter_any": None}
    fits = [line_meters(ln) for ln in scannable]
    return {"meter_iambic": sum("iambic" in f for f in fits) / len(fits),
            "meter_any": sum(bool(f) for f in fits) / len(fits)}


__all__ = ["poem_lines", "stanzas", "structure", "end_words", "rhyme", "meter", "meter_fit", "line_meters",
           "METERS", "STRESSED", "UNSTRESSED"]
