"""Poetry metrics on hand-made poems whose answers are known by hand."""
import pytest

from quill.verse.adherence import adherence, form_met, stem, topic_share
from quill.evaluate.metrics.copying import NgramIndex, copying
from quill.verse.form import line_meters, meter, meter_fit, rhyme, stanzas, structure
from quill.verse.phonetics import estimate_syllables, line_syllables, rhymes, stress_pattern, syllables, words
from quill.verse.text import distinct_n, diversity, has_span_loop, repetition, stopping
from quill.evaluate.poetry import METRIC_KEYS, aggregate, score_poem

COUPLET = "The sea is wide beneath the moon,\nAnd waves will sing a silver tune."
UNRHYMED = "The sea is blue,\nThe sky is red."
SHAKESPEARE = "Shall I compare thee to a summer's day"
HAIKU = "An old silent pond\nA frog jumps into the pond\nSplash! Silence again"
LIMERICK = ("There once was a cat from the lake\nWho dreamed every night of a cake\nHe ate it in bed\n"
            "With cream on his head\nAnd woke with a terrible ache")


# ------------------------------------------------------------------ phonetics
def test_words_normalise_case_punctuation_and_curly_apostrophes():
    assert words("Summer\u2019s DAY, 42 times!") == ["summer's", "day", "times"]


def test_syllables_from_cmu_and_fallback():
    assert syllables("summer") == 2 and syllables("temperate") in (2, 3)
    assert syllables("glorbulent") == estimate_syllables("glorbulent") == 3   # not in CMU
    assert estimate_syllables("flame") == 1 and estimate_syllables("table") == 2
    assert syllables("summer's") == 2                                          # possessive fallback


def test_stress_monosyllables_flexible():
    assert stress_pattern("sea") == "x"
    assert stress_pattern("compare") == "u/"


def test_rhymes_decisions():
    assert rhymes("moon", "tune") and rhymes("night", "light")
    assert not rhymes("blue", "red")
    assert not rhymes("day", "day")                  # identical words are not a rhyme
    assert rhymes("glorp", "snorp")                  # both unknown: spelling suffix
    assert not rhymes("", "day")


# ------------------------------------------------------------------ structure
def test_structure_counts():
    poem = "One line here\nTwo words\n\nA new stanza begins now"
    s = structure(poem)
    assert (s["lines"], s["stanzas"], s["words"]) == (3, 2, 10)
    assert s["words_per_line"] == pytest.approx(10 / 3)
    assert stanzas(poem) == [["One line here", "Two words"], ["A new stanza begins now"]]


def test_haiku_syllables():
    assert [line_syllables(x) for x in HAIKU.splitlines()] == [5, 7, 5]
    s = structure(HAIKU)
    assert s["syllables_per_line"] == pytest.approx(17 / 3)
    assert s["syllables_per_line_std"] == pytest.approx(0.9428, abs=1e-3)


def test_empty_poem_is_scorable():
    row = score_poem("")
    assert row["lines"] == 0 and row["rhymed_lines"] is None and row["meter_iambic"] is None
    assert set(METRIC_KEYS) <= set(row)


# ------------------------------------------------------------------ rhyme
def test_rhyming_couplet_scores_one():
    r = rhyme(COUPLET)
    assert r["rhyme_pairs"] == 1.0 and r["rhymed_lines"] == 1.0 and r["rhyme_alternate"] is None


def test_non_rhyming_couplet_scores_zero():
    r = rhyme(UNRHYMED)
    assert r["rhyme_pairs"] == 0.0 and r["rhymed_lines"] == 0.0


def test_rhyme_schemes_abab_and_aabb():
    abab = "I saw the light\nupon the sea\nthat burned all night\nand called to me"
    aabb = "I saw the light\nthat burned all night\nupon the sea\nand called to me"
    a, b = rhyme(abab), rhyme(aabb)
    assert a["rhyme_alternate"] == 1.0 and a["rhyme_adjacent"] == 0.0 and a["rhymed_lines"] == 1.0
    assert b["rhyme_adjacent"] == pytest.approx(2 / 3) and b["rhyme_alternate"] == 0.0
    assert a["rhyme_pairs"] == b["rhyme_pairs"] == pytest.approx(2 / 5)


def test_same_end_word_is_not_rhyme():
    assert rhyme("I love the sea\nI love the sea")["rhymed_lines"] == 0.0


# ------------------------------------------------------------------ meter
def test_iambic_pentameter_fits_iambic_only():
    assert line_meters(SHAKESPEARE) == ["iambic"]
    assert meter(SHAKESPEARE) == {"meter_iambic": 1.0, "meter_any": 1.0}


def test_trochaic_and_non_metrical_lines():
    assert "trochaic" in line_meters("Once upon a midnight dreary, while I pondered, weak and weary")
    m = meter("Remember the beautiful elephant of yesterday")
    assert m == {"meter_iambic": 0.0, "meter_any": 0.0}


def test_meter_fit_ignores_flexible_and_short_lines():
    assert meter_fit("xxxx", "u/") == 1.0
    assert meter_fit("/u/u", "u/") == 0.0
    assert meter("The sea")["meter_iambic"] is None


# ------------------------------------------------------------------ diversity / repetition / stopping
def test_distinct_n_by_hand():
    # the cat saw the cat: 5 unigrams, 3 unique; 4 bigrams (the cat, cat saw, saw the, the cat), 3 unique
    d = diversity("The cat saw the cat")
    assert d["distinct_1"] == pytest.approx(3 / 5) and d["distinct_2"] == pytest.approx(3 / 4)
    assert distinct_n(["a"], 2) is None


def test_loop_detection():
    assert has_span_loop("and the sea and the sea and the sea".split())
    assert repetition("the sea, the sea, the sea, forever")["loop"] is True
    assert repetition("O sea\nthe wind\nO sea\nthe sky\nO Sea!")["loop"] is True   # line three times
    r = repetition("O sea\nthe wind\nO sea\nthe sky")
    assert r["loop"] is False and r["repeated_lines"] == pytest.approx(1 / 4)
    assert repetition(COUPLET) == {"repeated_lines": 0.0, "loop": False}


def test_stopping_flag():
    assert stopping(True) == {"stopped": True} and stopping(None) == {"stopped": None}


# ------------------------------------------------------------------ copying
CORPUS = [
    "Tyger Tyger burning bright in the forests of the night what immortal hand or eye could frame thy fearful symmetry",
    "I wandered lonely as a cloud that floats on high o'er vales and hills",
]


def test_copied_passage_longest_span_and_flag():
    idx = NgramIndex(CORPUS)
    sample = "My own words then burning bright in the forests of the night what immortal hand and more"
    # copied: burning bright in the forests of the night what immortal hand = 11 words
    assert idx.longest_copy(sample) == 11
    assert copying(sample, idx) == {"copy_longest": 11, "copied": True}


def test_short_overlap_and_boundaries_are_not_copies():
    idx = NgramIndex(CORPUS)
    assert idx.longest_copy("in the forests of the night we sang") == 0          # 6 shared words < 8
    # the last words of poem 1 + the first of poem 2 never form a corpus n-gram
    assert idx.longest_copy("frame thy fearful symmetry i wandered lonely as") == 0
    assert copying("anything", None) == {"copy_longest": None, "copied": None}


def test_whole_poem_copy_and_unknown_words():
    idx = NgramIndex(CORPUS)
    assert idx.longest_copy(CORPUS[1].upper() + "!") == len(words(CORPUS[1]))
    assert idx.longest_copy("zzz " * 20) == 0
    assert len(NgramIndex([])) == 0 and NgramIndex([]).longest_copy(CORPUS[0]) == 0


# ------------------------------------------------------------------ adherence
def test_forms():
    assert form_met(HAIKU, "haiku") is True
    assert form_met("too short\nfor a haiku", "haiku") is False
    assert form_met(LIMERICK, "limerick") is True
    assert form_met(COUPLET, "couplets") is True and form_met(UNRHYMED, "couplets") is False
    assert form_met("\n".join(["a line"] * 14), "sonnet") is True
    assert form_met("a\nb\nc\nd", "quatrain") is True
    assert form_met(COUPLET, "free") is None
    with pytest.raises(ValueError):
        form_met(COUPLET, "villanelle")


def test_line_count_and_topic():
    a = adherence(HAIKU, {"lines": 3, "form": "haiku", "topic": ["frogs", "ponds", "moon"]})
    assert a == {"lines_ok": True, "form_ok": True, "topic": pytest.approx(2 / 3)}
    assert adherence(HAIKU, {"lines": 4})["lines_ok"] is False
    assert adherence(HAIKU, None) == {"lines_ok": None, "form_ok": None, "topic": None}
    assert stem("waves") == stem("waving") and stem("sea") == "sea"
    assert topic_share("moonlight on the water", ["moon"]) == 1.0


# ------------------------------------------------------------------ aggregate
def test_aggregate_means_skip_none_and_bools_become_shares():
    rows = [score_poem(COUPLET, {"lines": 2}, finished=True), score_poem("the sea the sea the sea", finished=False)]
    agg = aggregate(rows)
    assert agg["n"] == 2
    assert agg["stopped"] == 0.5 and agg["loop"] == 0.5
    assert agg["lines_ok"] == 1.0                       # only the first row asked for a line count
    assert agg["form_ok"] is None
    assert agg["lines"] == pytest.approx(1.5)
    assert aggregate([]) == {"n": 0}


def test_rhyme_is_also_reported_where_the_prompt_asks_for_it():
    poem = "The cat sat down upon the mat\nAnd there it grew both sleek and fat"
    asked = score_poem(poem, {"form": "couplets"})
    assert asked["rhymed_lines"] == 1.0 and asked["rhymed_lines_asked"] == 1.0
    assert score_poem(poem, {"topic": ["cat"]})["rhymed_lines_asked"] is None
    rows = [score_poem(poem, {"form": "couplets"}), score_poem("no rhyme here\nnor there at all", {})]
    assert aggregate(rows)["rhymed_lines_asked"] == 1.0 and aggregate(rows)["rhymed_lines"] == 0.5
