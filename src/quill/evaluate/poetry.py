"""Score a poem: every metric of ``quill.evaluate.metrics`` in one flat dict, and their aggregation.

One flat dict per sample (``score_poem``) keeps eval.json, the report tables and the bars simple:
a metric is a key, the same key for model samples and human poems. ``aggregate`` averages each key
over the samples where it applies (None = not applicable: no scannable line, no line-count check),
so "form met" is a share of the prompts that asked for a form, not of all prompts.
"""
from __future__ import annotations

import math
from typing import Iterable

from quill.evaluate.metrics.adherence import adherence
from quill.evaluate.metrics.copying import NgramIndex, copying
from quill.evaluate.metrics.form import meter, rhyme, structure
from quill.evaluate.metrics.text import diversity, repetition, stopping

# The keys every scored sample carries, in report order; HEADLINE are the ones drawn as bars.
METRIC_KEYS = [
    "lines", "stanzas", "words", "words_per_line", "syllables_per_line", "syllables_per_line_std",
    "rhymed_lines", "rhyme_pairs", "rhyme_adjacent", "rhyme_alternate", "meter_iambic", "meter_any",
    "distinct_1", "distinct_2", "repeated_lines", "loop", "stopped", "copy_longest", "copied",
    "lines_ok", "form_ok", "topic",
]
HEADLINE = ["rhymed_lines", "meter_iambic", "meter_any", "distinct_1", "distinct_2", "repeated_lines", "loop",
            "stopped", "copied", "lines_ok", "form_ok", "topic"]

__all__ = ["score_poem", "aggregate", "score_many", "METRIC_KEYS", "HEADLINE", "NgramIndex"]


def score_poem(text: str, checks: dict | None = None, finished: bool | None = None,
               index: NgramIndex | None = None) -> dict:
    """All metrics for one poem. ``checks``: the prompt's {"form","lines","topic"}; ``finished``: ended
    with EOS (None for human poems); ``index``: training-corpus n-grams for the copy metrics."""
    out: dict = {}
    out.update(structure(text))
    out.update(rhyme(text))
    out.update(meter(text))
    out.update(diversity(text))
    out.update(repetition(text))
    out.update(stopping(finished))
    out.update(copying(text, index))
    out.update(adherence(text, checks))
    return out


def score_many(texts: Iterable[str], index: NgramIndex | None = None) -> list[dict]:
    """Score poems without prompt checks or stop flags (the human reference)."""
    return [score_poem(t, index=index) for t in texts]


def aggregate(rows: list[dict]) -> dict:
    """Mean of every numeric/bool key over the rows where it is not None (bools become shares).

    ``n`` is the number of rows; a key that never applied is None. ``copy_longest`` also gets its
    maximum (``copy_longest_max``), because one recited poem matters more than the average.
    """
    keys = [k for k in METRIC_KEYS if any(k in r for r in rows)]
    keys += sorted({k for r in rows for k in r} - set(keys))
    out: dict = {"n": len(rows)}
    for k in keys:
        vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float, bool)) and r.get(k) is not None]
        vals = [v for v in vals if not math.isnan(v)]
        out[k] = sum(vals) / len(vals) if vals else None
    copies = [r["copy_longest"] for r in rows if r.get("copy_longest") is not None]
    if copies:
        out["copy_longest_max"] = max(copies)
    return out
