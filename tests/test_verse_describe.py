"""verse.describe on hand-written poems, each checked against the metrics' own form_met so the two agree."""
from __future__ import annotations

import pytest

from quill.verse.adherence import form_met
from quill.verse.describe import describe, dominant_meter, rhyme_letters, scheme_name

COUPLETS = """The sun goes down behind the hill,
And all the valley lies so still.
The farmer walks his weary way,
To rest until the break of day.
The owl awakes within the tree,
And sings a song for you and me."""

ABAB = """The wind is cold upon the shore,
The heather bends beneath the rain,
I hear the knocking at the door,
And know that you have come again."""

LIMERICK = """There once was a man from the coast,
Who wanted a cup and some toast,
He sat on a chair,
And combed out his hair,
And ate what he wanted the most."""

SONNET = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee."""

HAIKU = """An old silent pond
A frog jumps into the pond
Splash! Silence again."""

PROSE = """I went to the market on a Tuesday morning
because the refrigerator was nearly empty
and my neighbour had asked me for bread,
so I carried two bags and an umbrella."""

TYGER = """Tyger Tyger, burning bright,
In the forests of the night;
What immortal hand or eye,
Could frame thy fearful symmetry?"""


def test_rhyme_letters():
    assert rhyme_letters(COUPLETS) == "AABBCC"
    assert rhyme_letters(ABAB) == "ABAB"
    assert rhyme_letters(LIMERICK) == "AABBA"
    assert rhyme_letters(PROSE) == "ABCD"
    assert rhyme_letters("") == ""
    assert len(rhyme_letters(SONNET)) == 14 and rhyme_letters(SONNET).endswith("HH")
    # ABBA: the A is found three lines back
    assert rhyme_letters("I saw the night\nupon the sea\nthat came to me\nwith all its light") == "ABBA"


def test_couplets_agree_with_form_met():
    d = describe(COUPLETS)
    assert d["scheme"] == "couplets" and d["form"] == "couplets" and d["lines"] == 6
    assert form_met(COUPLETS, "couplets")
    assert d["meter"] == "iambic tetrameter"


def test_abab_quatrain():
    d = describe(ABAB)
    assert d["scheme"] == "ABAB" and d["form"] == "quatrain" and form_met(ABAB, "quatrain")
    assert not form_met(ABAB, "couplets")
    assert scheme_name(ABAB + "\n\n" + ABAB.replace("rain", "plain").replace("again", "in vain")) == "ABAB"


def test_limerick_agrees_with_form_met():
    d = describe(LIMERICK)
    assert d["scheme"] == "AABBA" and d["form"] == "limerick" and form_met(LIMERICK, "limerick")
    assert d["syllables"] == [8, 8, 5, 5, 8]


def test_shakespearean_sonnet():
    d = describe(SONNET)
    assert d["form"] == "sonnet" and form_met(SONNET, "sonnet")
    assert d["meter"] == "iambic pentameter" and d["lines"] == 14 and d["stanzas"] == 1
    # 14 unrhymed lines are not a sonnet here, even though form_met only counts lines
    flat = "\n".join([PROSE] * 3 + PROSE.split("\n")[:2])
    assert describe(flat)["form"] is None and form_met(flat, "sonnet")


def test_haiku():
    d = describe(HAIKU)
    assert d["form"] == "haiku" and form_met(HAIKU, "haiku") and d["syllables"] == [5, 7, 5]
    assert d["scheme"] == "unrhymed" and d["meter"] is None


def test_unrhymed_prose_lines():
    d = describe(PROSE)
    assert d["scheme"] == "unrhymed" and d["meter"] is None
    assert d["form"] == "quatrain" and form_met(PROSE, "quatrain")  # four lines are a quatrain, rhymed or not
    assert not form_met(PROSE, "couplets")


def test_trochees_and_irregular_rhyme():
    assert dominant_meter(TYGER) == "trochaic tetrameter"
    assert scheme_name(TYGER) is None  # AABC: neither a named scheme nor unrhymed
    anapests = ("When the sea and the sky are together at last\n"
                "And the ship and the sailor are home from the blast")
    assert dominant_meter(anapests) == "anapestic tetrameter"


@pytest.mark.parametrize("poem", [COUPLETS, ABAB, LIMERICK, SONNET, HAIKU, PROSE, TYGER])
def test_described_form_and_scheme_always_pass_the_metric(poem):
    d = describe(poem)
    if d["form"]:
        assert form_met(poem, d["form"])
    if d["scheme"] == "couplets":
        assert form_met(poem, "couplets")
    if d["scheme"] == "AABBA":
        assert form_met(poem, "limerick")
    assert len(d["letters"]) == d["lines"] == len(d["syllables"])
