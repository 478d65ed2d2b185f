"""One poetic score per sample: a weighted mean, in [0, 1], of the checks that apply to its prompt.

The terms (each in [0, 1]; ``metrics`` keys as ``quill.evaluate.poetry.score_poem`` writes them):

=========  ======  ====================================================  ==========================================
term       weight  value                                                 applies when
=========  ======  ====================================================  ==========================================
form       2       ``form_ok`` (the named form's shape, see form_met)    the prompt names a checkable form
rhyme      2       ``rhymed_lines`` (0 when the poem has < 2 lines)      it asks for rhyme: couplets, limerick,
                                                                         sonnet, quatrain, or a scheme ("ABAB")
meter      1       ``meter_<foot>``: share of scannable lines in the     a sonnet (iambic) or a named meter
                   foot asked (0 when no line scans)
lines      1       ``lines_ok`` (exact line count)                       the prompt asks for a count
stopped    1       ``stopped`` (EOS before the token limit)              known (model samples; not human poems)
topic      1       ``topic`` (share of topic words present)              the prompt has topic words
no loop    1       ``not loop``                                          always
no copy    1       ``not copied`` (no 8-gram recited from training)      the copy check ran (``copied`` not None)
=========  ======  ====================================================  ==========================================

The score is ``sum(w * value) / sum(w)`` over the terms that apply (the weights renormalised), so a haiku
request is judged on form, lines, topic, stopping and loops, a free request on topic, stopping and loops.
Form and rhyme weigh double: they are what a form request asks for and what a small LM most often
misses; stopping, loops and copying are the classic failures, each a point. A loop or a never-ending
sample costs as much as a missed line count.

``score_text`` computes the needed metrics from ``quill.verse`` alone (no copy check), so the decoding
engine can rank best-of-N candidates with it; ``checks_from_prompt`` turns a user's free-text request
into the checks (form and lines via ``forms.read_prompt``, topic = content words after "about"/"on").
"""
from __future__ import annotations

import re

from quill.verse.adherence import adherence
from quill.verse.form import METERS, line_meters, poem_lines, rhyme
from quill.verse.forms import FEET, NAMED_FORMS, NUMBER_WORDS, parse_meter, read_prompt
from quill.verse.phonetics import line_stresses
from quill.verse.text import repetition

WEIGHTS = {"form": 2.0, "rhyme": 2.0, "meter": 1.0, "lines": 1.0, "stopped": 1.0, "topic": 1.0,
           "no_loop": 1.0, "no_copy": 1.0}
RHYMED_FORMS = ("couplets", "limerick", "sonnet", "quatrain")
METER_FORMS = {"sonnet": "iambic"}      # forms whose meter is part of the request
MIN_SCANNABLE = 4                       # as quill.verse.form.meter: shorter lines say nothing about meter

__all__ = ["WEIGHTS", "poetic_score", "score_terms", "score_text", "checks_from_prompt", "asked_rhyme",
           "asked_foot"]


def asked_rhyme(checks: dict | None) -> bool:
    """Whether the request asks for rhyme: a rhymed named form, or a rhyme scheme."""
    checks = checks or {}
    return checks.get("form") in RHYMED_FORMS or bool(checks.get("rhyme"))


def asked_foot(checks: dict | None) -> str | None:
    """The metrical foot asked for ("iambic" for sonnets, else the named meter's), or None."""
    checks = checks or {}
    if checks.get("meter"):
        try:
            return parse_meter(str(checks["meter"]))[0]
        except ValueError:
            return None
    return METER_FORMS.get(checks.get("form"))


def _share(x) -> float:
    return 0.0 if x is None else float(x)


def score_terms(metrics: dict, checks: dict | None) -> dict[str, float]:
    """The terms that apply, each in [0, 1] (see the table above)."""
    checks = checks or {}
    terms: dict[str, float] = {}
    if checks.get("form") and metrics.get("form_ok") is not None:
        terms["form"] = float(metrics["form_ok"])
    if asked_rhyme(checks):
        terms["rhyme"] = _share(metrics.get("rhymed_lines"))
    foot = asked_foot(checks)
    if foot:
        value = metrics.get(f"meter_{foot}")
        terms["meter"] = _share(value if value is not None or f"meter_{foot}" in metrics
                                else metrics.get("meter_any"))
    if checks.get("lines") is not None and metrics.get("lines_ok") is not None:
        terms["lines"] = float(metrics["lines_ok"])
    if metrics.get("stopped") is not None:
        terms["stopped"] = float(metrics["stopped"])
    if checks.get("topic") and metrics.get("topic") is not None:
        terms["topic"] = float(metrics["topic"])
    terms["no_loop"] = 0.0 if metrics.get("loop") else 1.0
    if metrics.get("copied") is not None:
        terms["no_copy"] = 0.0 if metrics["copied"] else 1.0
    return terms


def poetic_score(metrics: dict, checks: dict | None) -> float:
    """The weighted mean of the applicable terms, in [0, 1], from a flat metric dict (``score_poem``'s)."""
    terms = score_terms(metrics, checks)
    total = sum(WEIGHTS[k] for k in terms)
    return sum(WEIGHTS[k] * v for k, v in terms.items()) / total


def meter_share(text: str, foot: str) -> float | None:
    """Share of scannable lines (>= 4 syllables) that fit ``foot``; None when none scans."""
    scannable = [ln for ln in poem_lines(text) if len(line_stresses(ln)) >= MIN_SCANNABLE]
    if not scannable:
        return None
    return sum(foot in line_meters(ln) for ln in scannable) / len(scannable)


def score_text(text: str, checks: dict | None = None, finished: bool | None = None) -> float:
    """``poetic_score`` of a poem computed from ``quill.verse`` only (no copy check): what best-of-N ranks by.
    Only the metrics the checks need are computed (rhyme and meter only when asked)."""
    checks = checks or {}
    metrics: dict = {"stopped": None if finished is None else bool(finished)}
    metrics.update(adherence(text, checks))
    metrics["loop"] = repetition(text)["loop"]
    if asked_rhyme(checks):
        metrics["rhymed_lines"] = rhyme(text)["rhymed_lines"]
    foot = asked_foot(checks)
    if foot in METERS:
        metrics[f"meter_{foot}"] = meter_share(text, foot)
    return poetic_score(metrics, checks)


# --------------------------------------------------------------------------- reading a request
STOPWORDS = frozenset("""a an the and or but of in on at to for from by with without into onto upon over under
about as is are was were be been being it its this that these those his her their our my your me us them him
she he they we i you who whom which what when where while how why all any some no not so very just only also
than then there here one ones each every such own same other another more most few many much can could would
should will shall may might must do does did done let make write compose give tell create poem poems verse
verses piece short long little please using use like style way""".split())
FORM_WORDS = frozenset([*NAMED_FORMS, *(f + "s" for f in NAMED_FORMS), *METERS, *FEET, *NUMBER_WORDS,
                        "line", "lines", "rhyme", "rhymes", "rhyming", "rhymed", "couplet", "stanza", "stanzas",
                        "syllable", "syllables", "meter", "metre", "exactly", "shakespearean", "petrarchan",
                        "funny", "theme", "subject", "topic", "titled", "called"])
_TOPIC = re.compile(r"\b(?:about|on)\s+([^.,;:!?\n]+)", re.IGNORECASE)


def topic_words(prompt: str) -> list[str]:
    """Content words after the first "about" (else "on"), up to the next punctuation mark, stopwords and
    form words ("ten-line", "iambic") dropped, in order, without repeats."""
    matches = [m for m in _TOPIC.finditer(prompt) if m.group(0).lower().startswith("about")] \
        or list(_TOPIC.finditer(prompt))
    if not matches:
        return []
    out: list[str] = []
    for w in re.findall(r"[a-z']+", matches[0].group(1).lower().replace("-", " ")):
        w = w.strip("'")
        if len(w) > 1 and w not in STOPWORDS and w not in FORM_WORDS and not w.isdigit() and w not in out:
            out.append(w)
    return out


def checks_from_prompt(prompt: str) -> dict:
    """The checks of a free-text request: {"form", "lines", "topic"} (and "rhyme" / "meter" when it names a
    scheme or a meter), only the keys found; "Write a sonnet about love" -> {"form": "sonnet", "lines": 14,
    "topic": ["love"]}."""
    found = read_prompt(prompt or "")
    checks: dict = {}
    form = found.get("form")
    if form:
        checks["form"] = form
    lines = found.get("lines") or {"sonnet": 14, "haiku": 3, "limerick": 5, "quatrain": 4}.get(form or "")
    if lines:
        checks["lines"] = int(lines)
    if found.get("rhyme") and found["rhyme"] != "couplets":
        checks["rhyme"] = found["rhyme"]
    if found.get("meter"):
        checks["meter"] = found["meter"]
    topic = topic_words(prompt or "")
    if topic:
        checks["topic"] = topic
    return checks
