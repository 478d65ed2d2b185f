"""Score a poem: every metric of ``quill.verse`` (and the copy check) in one flat dict, and their aggregation.

One flat dict per sample (``score_poem``) keeps eval.json, the report tables and the bars simple:
a metric is a key, the same key for model samples and human poems. ``aggregate`` averages each key
over the samples where it applies (None = not applicable: no scannable line, no line-count check),
so "form met" is a share of the prompts that asked for a form, not of all prompts. ``intervals`` gives
each mean its 95% percentile-bootstrap interval over the samples. ``poetic_score`` (the headline, see
``quill.verse.score``) folds the checks that apply to a prompt into one number in [0, 1].
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from quill.evaluate.metrics.copying import NgramIndex, copying
from quill.verse.adherence import adherence
from quill.verse.form import meter, rhyme, structure
from quill.verse.score import asked_rhyme, poetic_score
from quill.verse.text import diversity, repetition, stopping

# The keys every scored sample carries, in report order; HEADLINE are the ones drawn as bars.
METRIC_KEYS = [
    "poetic_score", "lines", "stanzas", "words", "words_per_line", "syllables_per_line", "syllables_per_line_std",
    "rhymed_lines", "rhymed_lines_asked", "rhyme_pairs", "rhyme_adjacent", "rhyme_alternate", "meter_iambic", "meter_any",
    "distinct_1", "distinct_2", "repeated_lines", "loop", "stopped", "copy_longest", "copied",
    "lines_ok", "form_ok", "topic",
]
HEADLINE = ["poetic_score", "rhymed_lines", "rhymed_lines_asked", "meter_iambic", "meter_any", "distinct_1", "distinct_2",
            "repeated_lines", "loop", "stopped", "copied", "lines_ok", "form_ok", "topic"]

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0          # fixed: the same samples give the same interval on every run

__all__ = ["score_poem", "rescore", "aggregate", "intervals", "bootstrap_interval", "score_many", "METRIC_KEYS",
           "HEADLINE", "NgramIndex"]


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
    # rhyme where the prompt asks for it (couplets, limericks, sonnets, quatrains, a scheme): the figure to
    # hold against the human corpus' rhymed_lines; None for prompts that do not ask
    out["rhymed_lines_asked"] = out["rhymed_lines"] if asked_rhyme(checks) else None
    out["poetic_score"] = poetic_score(out, checks)
    return out


def rescore(metrics: dict, checks: dict | None) -> dict:
    """Recompute ``poetic_score`` after a metric changed (eval scores copying on the continuation only)."""
    metrics["poetic_score"] = poetic_score(metrics, checks)
    return metrics


def score_many(texts: Iterable[str], index: NgramIndex | None = None) -> list[dict]:
    """Score poems without prompt checks or stop flags (the human reference)."""
    return [score_poem(t, index=index) for t in texts]


def _values(rows: list[dict], key: str) -> list[float]:
    vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float, bool)) and r.get(key) is not None]
    return [v for v in vals if not math.isnan(v)]


def aggregate(rows: list[dict]) -> dict:
    """Mean of every numeric/bool key over the rows where it is not None (bools become shares).

    ``n`` is the number of rows; a key that never applied is None. ``copy_longest`` also gets its
    maximum (``copy_longest_max``), because one recited poem matters more than the average.
    """
    keys = [k for k in METRIC_KEYS if any(k in r for r in rows)]
    keys += sorted({k for r in rows for k in r} - set(keys))
    out: dict = {"n": len(rows)}
    for k in keys:
        vals = _values(rows, k)
        out[k] = sum(vals) / len(vals) if vals else None
    copies = [r["copy_longest"] for r in rows if r.get("copy_longest") is not None]
    if copies:
        out["copy_longest_max"] = max(copies)
    return out


def bootstrap_interval(values, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean: ``resamples`` draws of len(values) with replacement, the
    (1-level)/2 and (1+level)/2 quantiles of their means. None for no values; [v, v] for one."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return None
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def intervals(rows: list[dict], level: float = 0.95) -> dict:
    """{key: [lo, hi]} for every key ``aggregate`` averages (bools as shares); keys without values left out."""
    keys = [k for k in METRIC_KEYS if any(k in r for r in rows)]
    keys += sorted({k for r in rows for k in r} - set(keys))
    out: dict = {}
    for k in keys:
        ci = bootstrap_interval(_values(rows, k), level)
        if ci is not None:
            out[k] = [ci[0], ci[1]]
    return out
