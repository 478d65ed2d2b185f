"""What a request asks of a poem's shape: a ``FormSpec`` (lines, rhyme scheme, meter, syllables), and the
judge of one line against it.

Three ways to ask, merged in this order (later ones win): a named form (``sonnet`` is 14 lines rhyming
ABAB CDCD EFEF GG in iambic pentameter; ``haiku`` 5-7-5 syllables; ``limerick`` AABBA; ``quatrain`` ABAB;
``couplets`` AABB...), then explicit ``lines`` / ``rhyme`` / ``meter``. ``form="auto"`` reads all of them
from the prompt's own words ("a sonnet", "8 lines", "ten-line", "rhyming couplets", "ABAB", "iambic
tetrameter"), the same phrasings ``quill.data.synthesize`` writes into its instructions.

The judge (``judge_line``) is what form-aware decoding asks when a line ends: does its end word rhyme with
its partner line (the CMU-based ``phonetics.rhymes`` the metrics use), are its syllables and stresses those
of the meter. It returns a score in [0, 1] (1 = every check passed), so the best of several tries can be kept.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import lru_cache

import pronouncing

from quill.config.generation import FORM_CHOICES, MAX_LINES, METER_MEASURES
from quill.verse.form import METERS, meter_fit
from quill.verse.phonetics import line_stresses, line_syllables, phones, rhymes, words

FEET = {name: i + 1 for i, name in enumerate(METER_MEASURES)}     # monometer 1 ... heptameter 7
FEET_NAMES = {v: k for k, v in FEET.items()}
NAMED_FORMS = tuple(f for f in FORM_CHOICES if f != "auto")
COUPLETS_DEFAULT_LINES = 8      # "a poem in rhyming couplets" with no count: four couplets
LINE_SYLLABLES = (4, 14)        # a line's syllables when no meter or count is asked (human lines: ~9)
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}


class FormError(ValueError):
    """A form setting that cannot be read; ``param`` names it (form, lines, rhyme or meter)."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True)
class FormSpec:
    """The shape asked for. ``rhyme``: one capital letter per line, lines with the same letter rhyme
    ("" or None: no rhyme asked); ``meter``: (foot, feet), e.g. ("iambic", 5); ``syllables``: per line."""
    lines: int | None = None
    rhyme: str | None = None
    meter: tuple[str, int] | None = None
    syllables: tuple[int, ...] | None = None
    name: str | None = None

    @property
    def constrained(self) -> bool:
        return bool(self.lines or self.rhyme or self.meter or self.syllables)

    def describe(self) -> str:
        parts = [self.name] if self.name else []
        if self.lines:
            parts.append(f"{self.lines} lines")
        if self.rhyme:
            parts.append(self.rhyme)
        if self.meter:
            parts.append(meter_name(self.meter))
        if self.syllables:
            parts.append("-".join(map(str, self.syllables)))
        return ", ".join(parts) or "free"

    def partner(self, i: int) -> int | None:
        """The earlier line that line ``i`` must rhyme with (the last one with its letter), or None."""
        if not self.rhyme or i >= len(self.rhyme):
            return None
        letter = self.rhyme[i]
        earlier = [j for j in range(i) if self.rhyme[j] == letter]
        return earlier[-1] if earlier else None

    def opens(self, i: int) -> bool:
        """True when a later line must rhyme with line ``i`` (its end word needs rhymes to exist)."""
        return bool(self.rhyme) and i < len(self.rhyme) and self.rhyme[i] in self.rhyme[i + 1:]

    def syllable_range(self, i: int) -> tuple[int, int]:
        """(fewest, most) syllables line ``i`` may have."""
        if self.syllables and i < len(self.syllables):
            return self.syllables[i] - 1, self.syllables[i] + 1
        if self.meter:
            foot, feet = self.meter
            n = feet * len(METERS[foot])
            return n - 1, n + 1 + (foot == "iambic")   # a feminine ending adds one
        return LINE_SYLLABLES   # no meter asked: a line of verse, not a word or a paragraph


SHAKESPEAREAN = "ABABCDCDEFEFGG"
FORM_SPECS = {
    "sonnet": FormSpec(14, SHAKESPEAREAN, ("iambic", 5), None, "sonnet"),
    "haiku": FormSpec(3, None, None, (5, 7, 5), "haiku"),
    "limerick": FormSpec(5, "AABBA", None, (8, 8, 6, 6, 8), "limerick"),
    "quatrain": FormSpec(4, "ABAB", None, None, "quatrain"),
    "couplets": FormSpec(None, "couplets", None, None, "couplets"),
    "free": FormSpec(name="free"),
}


def meter_name(meter: tuple[str, int]) -> str:
    foot, feet = meter
    return f"{foot} {FEET_NAMES.get(feet, str(feet) + '-foot')}"


def parse_meter(text: str) -> tuple[str, int]:
    """"iambic pentameter" -> ("iambic", 5); "iambic" alone means pentameter for iambs, tetrameter else."""
    parts = text.lower().replace("-", " ").split()
    foot = next((p for p in parts if p in METERS), None)
    feet = next((FEET[p] for p in parts if p in FEET), None)
    if foot is None or len(parts) > 2 or (len(parts) == 2 and feet is None):
        raise FormError("meter", f"use FOOT [MEASURE] with FOOT one of {', '.join(METERS)} and MEASURE one of "
                                 f"{', '.join(FEET)}, got {text!r}")
    return foot, feet or (5 if foot == "iambic" else 4)


def expand_rhyme(rhyme: str, lines: int | None) -> str:
    """A scheme string for ``lines`` lines: "couplets" -> AABBCC..., a short scheme repeated with fresh
    letters ("ABAB" for 8 lines -> ABABCDCD)."""
    r = rhyme.strip()
    if r.lower() == "couplets":
        n = lines or COUPLETS_DEFAULT_LINES
        return "".join(string.ascii_uppercase[(i // 2) % 26] for i in range(n))
    r = r.replace(" ", "").upper()
    if not r or not all(c in string.ascii_uppercase for c in r) or len(r) > MAX_LINES:
        raise FormError("rhyme", f"use capital letters, one per line (ABAB, AABBA) or 'couplets', got {rhyme!r}")
    if lines is None or lines == len(r):
        return r
    out, shift = "", 0
    letters = sorted(set(r))
    while len(out) < lines:
        out += "".join(string.ascii_uppercase[(letters.index(c) + shift) % 26] for c in r)
        shift += len(letters)
    return out[:lines]


def form_spec(form: str | None = None, lines: int | None = None, rhyme: str | None = None,
              meter: str | None = None, prompt: str | None = None) -> FormSpec | None:
    """The merged request, or None when nothing is asked (plain decoding). ``form="auto"`` reads the prompt."""
    auto = None
    if form == "auto":
        auto = found = read_prompt(prompt or "")
        form, lines, rhyme, meter = (found.get("form"), lines or found.get("lines"), rhyme or found.get("rhyme"),
                                     meter or found.get("meter"))
    if form is None and lines is None and rhyme is None and meter is None:
        return None if auto is None else FORM_SPECS["free"]   # auto and nothing named: free verse, by line
    if form is not None and form not in FORM_SPECS:
        raise FormError("form", f"unknown form {form!r} (use {', '.join(FORM_CHOICES)})")
    base = FORM_SPECS[form] if form else FormSpec()
    if lines is not None and not (isinstance(lines, int) and not isinstance(lines, bool) and 1 <= lines <= MAX_LINES):
        raise FormError("lines", f"must be an integer from 1 to {MAX_LINES}, got {lines!r}")
    n = lines or base.lines
    scheme = rhyme if rhyme is not None else base.rhyme
    scheme = expand_rhyme(scheme, n) if scheme else None
    if n is None and scheme:
        n = len(scheme)
    syll = base.syllables if base.syllables and n == len(base.syllables) else None
    spec = FormSpec(n, scheme, parse_meter(meter) if meter else base.meter, syll, base.name)
    return spec if spec.constrained or spec.name == "free" else None


_NUM = r"(\d+|" + "|".join(NUMBER_WORDS) + r")"


def _number(word: str) -> int:
    return int(word) if word.isdigit() else NUMBER_WORDS[word]


def read_prompt(prompt: str) -> dict:
    """Form settings named in a request's words: {"form", "lines", "rhyme", "meter"} (only those found)."""
    text = prompt.lower()
    found: dict = {}
    for name in ("sonnet", "haiku", "limerick", "quatrain"):
        if re.search(rf"\b{name}s?\b", text):
            found["form"] = name
            break
    m = re.search(rf"\b{_NUM}[ -](?:rhyming )?couplets\b", text)
    if m:
        found["lines"] = 2 * _number(m.group(1))
    if re.search(r"\bcouplets?\b", text) and "form" not in found:
        found["form"], found["rhyme"] = "couplets", "couplets"
    m = re.search(rf"\b{_NUM}[ -]lines?\b", text) or re.search(rf"\b(?:of|in) (?:exactly )?{_NUM} lines\b", text)
    if m:
        found["lines"] = _number(m.group(1))
    scheme = re.search(r"\b((?:[A-G]{2,}\s?)+)\b", prompt)  # capital letters in the original text
    if scheme and len(set(scheme.group(1).replace(" ", ""))) >= 2:
        found["rhyme"] = scheme.group(1).replace(" ", "")
    m = re.search(r"\b(" + "|".join(METERS) + r")(?:[ -](" + "|".join(FEET) + r"))?\b", text)
    if m:
        found["meter"] = " ".join(x for x in m.groups() if x)
    if "form" in found and found["form"] == "quatrain" and "lines" not in found:
        found["lines"] = 4
    return found


# --------------------------------------------------------------------------- judging lines
@lru_cache(maxsize=200_000)
def rhyme_count(word: str) -> int:
    """How many other dictionary words rhyme with ``word`` (0 for words the dictionary lacks): the size of
    its rhyming part's group in ``pronouncing``'s index (a look-up, not a scan of the dictionary)."""
    pronouncing.init_cmu()
    groups = {pronouncing.rhyming_part(p) for p in phones(word)}
    return max((len(pronouncing.rhyme_lookup.get(g, ())) - 1 for g in groups), default=0)


MIN_RHYMES = 8   # a line that opens a rhyme must end on a word with at least this many rhymes
# Words a line of verse does not end on (an article, a preposition, a conjunction leaves it hanging);
# form-aware decoding never ends a line on one, and the judge marks a line that does.
WEAK_ENDS = frozenset("""a an the and or nor but of to in on at by for from with into onto upon as than
that which whose who if my thy his her its our your their this these those is are was were be been am
""".split())


SHORT_WORDS = frozenset("me be we he go so no do lo oh ye thee".split())   # whole words under 3 letters


def whole_word(word: str) -> bool:
    """A word a line may end on: known to the dictionary, not a weak word, and not a fragment the tokenizer
    split off ("y", "di"): at least 3 letters unless it is one of the short words verse ends on."""
    return bool(phones(word)) and word not in WEAK_ENDS and (len(word) >= 3 or word in SHORT_WORDS)


def end_word(line: str) -> str:
    w = words(line)
    return w[-1] if w else ""


def judge_line(spec: FormSpec, i: int, line: str, previous: list[str], meter: bool = True) -> float:
    """Score line ``i`` (0-based) against the spec, given the accepted lines before it: the mean of the checks
    that apply (rhyme with its partner, a rhymable end word when it opens a rhyme, syllable count, meter
    unless ``meter`` is false, not a repeat of an earlier line, not ending on a weak word such as "the").
    1.0 = all pass."""
    checks: list[float] = []
    end = end_word(line)
    if not end:
        return 0.0
    partner = spec.partner(i)
    if partner is not None and partner < len(previous):
        checks.append(float(rhymes(end, end_word(previous[partner]))))
    elif spec.opens(i):
        checks.append(float(rhyme_count(end) >= MIN_RHYMES))
    bounds = spec.syllable_range(i)
    if bounds:
        n = line_syllables(line)
        lo, hi = bounds
        checks.append(1.0 if lo <= n <= hi else max(0.0, 1.0 - 0.25 * min(abs(n - lo), abs(n - hi))))
    if spec.meter and meter:
        stresses = line_stresses(line)
        checks.append(1.0 if meter_fit(stresses, METERS[spec.meter[0]]) >= 0.8 else 0.0)
    norm = " ".join(words(line))
    checks.append(0.0 if any(" ".join(words(p)) == norm for p in previous) else 1.0)
    checks.append(0.0 if end in WEAK_ENDS else 1.0)
    return sum(checks) / len(checks)
