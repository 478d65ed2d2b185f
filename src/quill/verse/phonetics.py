"""Words and their sounds: the one place that asks the CMU dictionary (via ``pronouncing``).

Every metric that needs syllables, stresses or rhymes goes through here, so the fallbacks for words
the dictionary does not know (invented words, archaic spellings, typos a small model makes) are
decided once. Fallbacks are deliberately crude — a vowel-group count, a spelling suffix — because
their job is to keep a poem scorable, not to be a second pronunciation model.
"""
from __future__ import annotations

import re
from functools import lru_cache

import pronouncing

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
_VOWELS = re.compile(r"[aeiouy]+")
# Stress symbols used by the meter check: stressed, unstressed, either ("flexible").
STRESSED, UNSTRESSED, FLEXIBLE = "/", "u", "x"


def words(text: str) -> list[str]:
    """Lower-cased words with inner apostrophes kept (``summer's``), punctuation and digits dropped.

    Curly quotes are folded to ASCII first, because models and corpora mix them freely and
    ``summer’s`` must look the same as ``summer's`` to the dictionary and to the copy index.
    """
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return _WORD.findall(text)


@lru_cache(maxsize=200_000)
def phones(word: str) -> tuple[str, ...]:
    """CMU pronunciations of ``word`` (all variants); tries without a possessive/elided ending too."""
    found = pronouncing.phones_for_word(word)
    if not found and word.endswith("'s"):
        found = pronouncing.phones_for_word(word[:-2])
        found = [p + " Z" for p in found]  # the 's adds a consonant, not a syllable (mostly)
    if not found and "'" in word:
        found = pronouncing.phones_for_word(word.replace("'", ""))
    return tuple(found)


def estimate_syllables(word: str) -> int:
    """Vowel-group heuristic for words the dictionary lacks: groups of a/e/i/o/u/y, minus a silent final e.

    ``-le`` after a consonant keeps its syllable (``table``); every word has at least one.
    """
    w = word.replace("'", "")
    n = len(_VOWELS.findall(w))
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and n > 1:
        n -= 1
    elif w.endswith("le") and len(w) > 2 and w[-3] in "aeiouy" and n > 1:
        n -= 1
    return max(1, n)


def syllables(word: str) -> int:
    """Syllable count: the first CMU pronunciation, else the heuristic."""
    p = phones(word)
    return pronouncing.syllable_count(p[0]) if p else estimate_syllables(word)


def stress_pattern(word: str) -> str:
    """Stress symbols for one word, one per syllable.

    Monosyllables are FLEXIBLE: "the", "sea", "and" are stressed or not by their neighbours, so a
    scanner that fixed them would reject most real verse. Secondary stress (CMU ``2``) is flexible
    for the same reason. Unknown words give flexible syllables from the heuristic count: they
    neither help nor hurt a line's fit.
    """
    p = phones(word)
    if not p:
        return FLEXIBLE * estimate_syllables(word)
    digits = pronouncing.stresses(p[0])
    if len(digits) <= 1:
        return FLEXIBLE * max(1, len(digits))
    return "".join({"1": STRESSED, "0": UNSTRESSED}.get(d, FLEXIBLE) for d in digits)


def line_stresses(line: str) -> str:
    return "".join(stress_pattern(w) for w in words(line))


def line_syllables(line: str) -> int:
    return sum(syllables(w) for w in words(line))


def _spelling_rhyme_part(word: str) -> str:
    """The last vowel group and what follows it (``night`` -> ``ight``), with a silent final e kept."""
    w = word.replace("'", "")
    core = w[:-1] if w.endswith("e") and len(_VOWELS.findall(w)) > 1 else w
    m = list(_VOWELS.finditer(core))
    return w[m[-1].start():] if m else w


def rhyme_parts(word: str) -> tuple[set[str], bool]:
    """(rhyming parts, from_dictionary). All CMU variants count, so ``wind`` rhymes both ways."""
    p = phones(word)
    if p:
        return {pronouncing.rhyming_part(x) for x in p}, True
    return {_spelling_rhyme_part(word)}, False


def rhymes(a: str, b: str) -> bool:
    """True when two words rhyme.

    Decisions: the same word twice is NOT a rhyme (repeating "sea" at every line end is the
    failure we want to see, not reward). With both words in the CMU dictionary they rhyme when
    any pronunciations share a rhyming part (last stressed vowel onwards). If either is unknown,
    both are compared by spelling suffix (last vowel group onwards), at least two letters long.
    """
    a, b = a.lower(), b.lower()
    if not a or not b or a == b:
        return False
    pa, known_a = rhyme_parts(a)
    pb, known_b = rhyme_parts(b)
    if known_a and known_b:
        return bool(pa & pb)
    sa, sb = _spelling_rhyme_part(a), _spelling_rhyme_part(b)
    return len(sa) >= 2 and sa == sb
