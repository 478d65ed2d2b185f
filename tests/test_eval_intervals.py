"""Percentile bootstrap intervals of the per-sample means (eval.json ``intervals``, the report's [lo, hi])."""
import numpy as np
import pytest

from quill.evaluate.poetry import aggregate, bootstrap_interval, intervals
from quill.evaluate.report import with_interval


def test_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (10, 100, 1000):
        x = rng.normal(0.5, 0.2, size=n)
        lo, hi = bootstrap_interval(x)
        assert lo < x.mean() < hi
        widths.append(hi - lo)
        # about 2 * 1.96 * sd / sqrt(n) for a normal mean
        assert hi - lo == pytest.approx(2 * 1.96 * x.std() / np.sqrt(n), rel=0.3)
    assert widths[0] > widths[1] > widths[2]


def test_interval_is_fixed_by_its_seed_and_bounded_by_the_data():
    x = [0, 1, 1, 0, 1, 1, 1, 0]
    assert bootstrap_interval(x) == bootstrap_interval(x)
    lo, hi = bootstrap_interval(x)
    assert 0 <= lo < 0.625 < hi <= 1
    assert bootstrap_interval([]) is None
    assert bootstrap_interval([0.3]) == (0.3, 0.3) and bootstrap_interval([2, 2, 2]) == (2.0, 2.0)


def test_intervals_per_key_skip_none_and_bools_are_shares():
    rows = [{"loop": True, "topic": None, "lines": 4}, {"loop": False, "topic": 1.0, "lines": 6},
            {"loop": False, "topic": 0.0, "lines": 5}, {"loop": False, "topic": None, "lines": 5}]
    ci, mean = intervals(rows), aggregate(rows)
    assert set(ci) == {"loop", "topic", "lines"}
    for k in ci:
        assert ci[k][0] <= mean[k] <= ci[k][1]
    assert 0.0 <= ci["loop"][0] and ci["loop"][1] <= 1.0


def test_report_cell_shows_mean_and_interval():
    assert with_interval(0.523, [0.41, 0.634]) == "0.52 [0.41, 0.63]"
    assert with_interval(0.00366, [0.0, 0.0123]) == "0.00 [0.00, 0.01]"
    assert with_interval(None, [0.1, 0.2]) is None and with_interval(0.5, None) == "0.50"
    assert with_interval(0.5, [0.5, 0.5]) == "0.50" and with_interval(24, None) == 24
