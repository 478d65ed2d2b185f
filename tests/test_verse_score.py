"""The one poetic score per sample (quill.verse.score): its terms, weights, and reading a request."""
import pytest

from quill.verse.score import WEIGHTS, checks_from_prompt, poetic_score, score_terms, score_text

LIMERICK = """There once was a cat from the town
Who wore a magnificent crown
She ate all the cheese
With the greatest of ease
And never once wore a frown"""


def test_only_the_terms_that_apply_count_with_renormalised_weights():
    m = {"form_ok": True, "rhymed_lines": 0.5, "lines_ok": False, "stopped": True, "topic": 0.5, "loop": False,
         "copied": None, "meter_iambic": 1.0}
    # a free request: only stopped and no-loop (topic/lines/form not asked, copying not checked)
    assert score_terms(m, {}) == {"stopped": 1.0, "no_loop": 1.0}
    assert poetic_score(m, None) == 1.0
    # a limerick request: form (2), rhyme (2), lines (1), stopped (1), topic (1), no loop (1)
    checks = {"form": "limerick", "lines": 5, "topic": ["cat"]}
    terms = score_terms(m, checks)
    assert set(terms) == {"form", "rhyme", "lines", "stopped", "topic", "no_loop"}
    want = (2 * 1 + 2 * 0.5 + 1 * 0 + 1 + 0.5 + 1) / 8
    assert poetic_score(m, checks) == pytest.approx(want)
    # a sonnet also asks for iambic meter; copying counts once checked
    m2 = dict(m, copied=True)
    terms = score_terms(m2, {"form": "sonnet"})
    assert terms["meter"] == 1.0 and terms["no_copy"] == 0.0
    assert WEIGHTS["form"] == WEIGHTS["rhyme"] == 2 * WEIGHTS["stopped"]


def test_score_bounds_and_failures_cost():
    good = {"form_ok": True, "rhymed_lines": 1.0, "lines_ok": True, "stopped": True, "topic": 1.0, "loop": False,
            "copied": False}
    checks = {"form": "couplets", "lines": 8, "topic": ["sea"]}
    assert poetic_score(good, checks) == 1.0
    bad = dict(good, form_ok=False, rhymed_lines=None, lines_ok=False, stopped=False, topic=0.0, loop=True,
               copied=True)
    assert poetic_score(bad, checks) == 0.0
    assert poetic_score(dict(good, loop=True), checks) < 1.0
    assert poetic_score(dict(good, stopped=None), checks) == 1.0            # unknown stop: the term is skipped
    # a free form has no checkable shape: form_ok None -> no form term
    assert "form" not in score_terms(dict(good, form_ok=None), {"form": "free"})


def test_rhyme_asked_by_scheme_and_named_meter():
    m = {"rhymed_lines": 0.25, "loop": False, "meter_any": 0.5}
    assert score_terms(m, {"rhyme": "ABAB"})["rhyme"] == 0.25
    assert "rhyme" not in score_terms(m, {"form": "haiku"})
    assert score_terms(m, {"meter": "trochaic tetrameter"})["meter"] == 0.5  # no meter_trochaic: meter_any


def test_score_text_uses_verse_only_and_matches_the_metric_path():
    from quill.evaluate.poetry import score_poem
    checks = {"form": "limerick", "lines": 5, "topic": ["cat", "cheese"]}
    s = score_text(LIMERICK, checks, finished=True)
    assert 0.9 < s <= 1.0
    assert s == pytest.approx(score_poem(LIMERICK, checks, finished=True)["poetic_score"])
    assert score_text(LIMERICK, checks, finished=False) < s
    assert score_text("the sea the sea the sea the sea", checks, finished=True) < 0.3
    assert 0.0 <= score_text("", None, None) <= 1.0


def test_checks_from_prompt():
    assert checks_from_prompt("Write a sonnet about love and time.") == {
        "form": "sonnet", "lines": 14, "topic": ["love", "time"]}
    assert checks_from_prompt("Write four rhyming couplets about a city at night.") == {
        "form": "couplets", "lines": 8, "topic": ["city", "night"]}
    assert checks_from_prompt("Write a haiku about the moon") == {"form": "haiku", "lines": 3, "topic": ["moon"]}
    c = checks_from_prompt("Write a four-line stanza rhyming ABAB about a candle.")
    assert c == {"lines": 4, "rhyme": "ABAB", "topic": ["candle"]}
    assert checks_from_prompt("a ten-line poem on the theme of loss, in iambic tetrameter") == {
        "lines": 10, "meter": "iambic tetrameter", "topic": ["loss"]}
    assert checks_from_prompt("Tell me something") == {}
    assert checks_from_prompt("") == {}
