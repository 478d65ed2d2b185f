"""Synthesized instruction pairs: deterministic, honest about which kinds apply and about what they name."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from quill.config import CleanConfig, DataConfig, SynthConfig
from quill.data.clean import clean_poems
from quill.data.sources import read_source
from quill.data.synthesize import mix, pairs_for_poem, select_poems, synthesize, truth_rates
from quill.data.topics import NUMBER_WORDS, salient_topic, topic_uses
from quill.verse.adherence import form_met, topic_share
from quill.verse.describe import dominant_meter, scheme_name
from quill.verse.form import poem_lines

FIX = Path(__file__).parent / "fixtures" / "data"


def fixture_poems():
    rows = read_source(DataConfig(source=str(FIX / "poems.jsonl")), None).rows
    return clean_poems(rows, CleanConfig()).records


def test_deterministic_and_order_independent():
    poems = fixture_poems()
    cfg = SynthConfig(per_poem=3, seed=7)
    a, kinds_a = synthesize(poems, cfg)
    b, _ = synthesize(list(reversed(poems)), cfg)
    assert a == synthesize(poems, cfg)[0]
    assert sorted(map(str, a)) == sorted(map(str, b))
    assert synthesize(poems, SynthConfig(per_poem=3, seed=8))[0] != a
    assert sum(kinds_a.values()) == len(a)


def test_every_kind_appears_and_answers_are_the_poem():
    poems = fixture_poems()
    records, kinds = synthesize(poems, SynthConfig(per_poem=8))
    assert set(kinds) == {"topic", "style", "title", "continue", "lines", "form", "scheme", "meter"}
    texts = {p["text"] for p in poems}
    for rec in records:
        user, answer = rec["messages"]
        assert user["role"] == "user" and answer["role"] == "assistant" and user["content"] and answer["content"]
        if not user["content"].startswith(("Continue", "Here is the start")):
            assert answer["content"] in texts
        else:  # continuation: prompt opening + answer rebuild the poem
            opening = user["content"].split("\n", 1)[1]
            assert any(t.startswith(opening) and t.endswith(answer["content"]) for t in texts)


def test_per_poem_and_kinds_respected():
    poems = fixture_poems()
    records, kinds = synthesize(poems, SynthConfig(per_poem=1, kinds=["style"]))
    assert set(kinds) == {"style"} and len(records) == len(poems)  # every fixture poem has an author
    assert all("in the style of" in r["messages"][0]["content"] or "would" in r["messages"][0]["content"]
               for r in records)
    records, _ = synthesize(poems, SynthConfig(per_poem=2))
    assert len(records) == 2 * len(poems)


def test_weights_make_a_kind_win_its_poems_more_often_and_are_validated():
    poems = fixture_poems()
    many = [dict(p, text=p["text"] + f"\n{'O sea' if i % 2 else 'O night'}, {i} times") for i in range(12)
            for p in poems]   # more poems (distinct texts, so distinct seeded choices) for the counts to mean much
    plain = synthesize(many, SynthConfig(per_poem=1))[1]
    weighted = synthesize(many, SynthConfig(per_poem=1, weights={"lines": 50.0}))[1]
    assert weighted["lines"] > 2 * plain["lines"] and sum(weighted.values()) == sum(plain.values())
    with pytest.raises(ValueError, match="weights: 'form' is not one of kinds"):
        SynthConfig(kinds=["topic"], weights={"form": 2.0})
    with pytest.raises(ValueError, match="weights.topic must be > 0"):
        SynthConfig(weights={"topic": 0.0})


def test_kinds_only_when_they_apply():
    bare = {"text": "one line only about the sea and the sea", "title": None, "author": None, "tags": []}
    kinds = [k for k, _ in pairs_for_poem(bare, SynthConfig(per_poem=8))]
    assert "style" not in kinds and "title" not in kinds and "continue" not in kinds and "topic" in kinds


SONNET = (FIX / "poems.jsonl").read_text().split('"title": "Sonnet 18", "text": "')[1].split('"')[0].replace(
    "\\n", "\n")


def test_forms_only_when_the_poem_has_them():
    def form_prompts(text):
        poem = {"text": text, "title": None, "author": None, "tags": []}
        return [r["messages"][0]["content"] for _, r in pairs_for_poem(poem, SynthConfig(per_poem=1, kinds=["form"]))]
    fourteen = "\n".join(f"the grey stone number {i} lies on the road" for i in range(14))
    assert form_prompts(fourteen) == []  # 14 lines that do not rhyme like a sonnet are not a sonnet
    assert "sonnet" in form_prompts(SONNET)[0]
    assert "haiku" in form_prompts("An old silent pond\nA frog jumps into the pond\nSplash! Silence again.")[0]
    assert "quatrain" in form_prompts("a\nb\nc\nd")[0]
    assert "couplets" in form_prompts("The sun goes down behind the hill,\nAnd all the valley lies so still.")[0]
    assert form_prompts("a\nb\nc\nd\ne") == []


POEMS = [
    {"text": SONNET, "title": "Sonnet 18", "author": "William Shakespeare", "tags": ["Love", "Summer", "Death"]},
    {"text": "The sun goes down behind the hill,\nAnd all the valley lies so still.\nThe farmer walks his weary way,\n"
             "To rest until the break of day.\nThe owl awakes within the tree,\nAnd sings a song for you and me.\n"
             "The hill is dark, the tree is black,\nThe farmer will not wander back.",
     "title": None, "author": None, "tags": ["Mothers", "Nature"]},
    {"text": "The wind is cold upon the shore,\nThe heather bends beneath the rain,\nI hear the wind against the door,\n"
             "And know that you have come again.", "title": "Return", "author": None, "tags": []},
    {"text": "There once was a man from the coast,\nWho wanted a cup and some toast,\nHe sat on a chair,\n"
             "And combed out his hair,\nAnd ate what he wanted the most.", "title": None, "author": "Anon", "tags": []},
    {"text": "I went to the market on a Tuesday morning\nbecause the refrigerator was nearly empty\nand my mother "
             "had asked me for bread,\nso I carried two bags and an umbrella\nto the market by the station.",
     "title": None, "author": None, "tags": []},
]


def _named_lines(prompt: str) -> int | None:
    words = "|".join(NUMBER_WORDS)
    m = re.search(rf"\b(\d+|{words})(?:-line| lines)\b", prompt)
    if not m:
        return None
    return int(m.group(1)) if m.group(1).isdigit() else NUMBER_WORDS.index(m.group(1))


@pytest.mark.parametrize("seed", range(4))
def test_every_prompt_tells_the_truth_about_its_answer(seed):
    records, _ = synthesize(POEMS + fixture_poems(), SynthConfig(per_poem=8, seed=seed))
    assert records
    for rec in records:
        prompt, answer = (m["content"] for m in rec["messages"])
        feats, asked = rec["features"], rec["features"]["asked"]
        if "topic" in asked:
            assert topic_share(answer, asked["topic"]) == 1.0 and feats["topic"] == asked["topic"]
        else:
            assert feats["topic"] == [] and (" about " not in prompt or feats["kind"] in ("continue", "title"))
        n = _named_lines(prompt) if feats["kind"] != "title" else None
        assert n == asked.get("lines") and (n is None or n == len(poem_lines(answer)))
        if "form" in asked:
            assert form_met(answer, asked["form"]) and asked["form"] in prompt
        for form in ("sonnet", "haiku", "limerick", "quatrain"):
            if form in prompt.lower() and feats["kind"] not in ("title", "continue"):
                assert asked.get("form") == form
        if "scheme" in asked:
            assert scheme_name(answer) == asked["scheme"]
            assert asked["scheme"] in prompt or (asked["scheme"] == "couplets" and "couplets" in prompt)
        if "meter" in asked:
            assert dominant_meter(answer) == asked["meter"] and asked["meter"] in prompt
        if "author" in asked:
            assert rec["author"] == asked["author"] and asked["author"] in prompt
        assert feats["lines"] == len(poem_lines(answer))
    rates = truth_rates(records)
    assert set(rates) >= {"topic", "lines", "form", "scheme"} and all(r["rate"] == 1.0 for r in rates.values())


def test_a_repeated_noun_is_the_topic_and_absent_tags_never_are():
    """The market the poem walks to twice, not the mother it mentions once; a tag the poem does not
    contain ("Mothers" for the farmer's couplets) is never named."""
    poem = POEMS[4]
    assert salient_topic(poem["text"]) == "the market"
    named = [rec["features"]["asked"]["topic"] for _, rec in pairs_for_poem(poem, SynthConfig(per_poem=8, seed=1))
             if "topic" in rec["features"]["asked"] and rec["features"]["kind"] != "continue"]  # (its own topic)
    assert named and all(t[0] == "market" for t in named)
    for seed in range(6):
        for _, rec in pairs_for_poem(POEMS[1], SynthConfig(per_poem=8, seed=seed)):
            assert "mother" not in rec["messages"][0]["content"].lower()


def test_most_pairs_name_a_topic_in_every_kind():
    records, _ = synthesize(POEMS + fixture_poems(), SynthConfig(per_poem=8, seed=0))
    with_topic = [r for r in records if "topic" in r["features"]["asked"]]
    assert len(with_topic) >= 0.6 * len(records)
    kinds = {r["features"]["kind"] for r in with_topic}
    assert kinds >= {"topic", "lines", "scheme", "meter", "form", "continue"}
    for kind in ("lines", "scheme", "meter", "continue"):
        of_kind = [r for r in records if r["features"]["kind"] == kind]
        assert sum("topic" in r["features"]["asked"] for r in of_kind) > len(of_kind) / 2, kind
    cont = [r for r in with_topic if r["features"]["kind"] == "continue"]
    assert all(" about " in r["messages"][0]["content"].split("\n")[0] for r in cont)
    assert truth_rates(records)["topic"]["rate"] == 1.0


def test_two_word_topics_join_nouns_the_poem_has():
    text = "The sea is grey beneath the sky,\nthe sea is cold, the gulls go by;\nI watch the sky, the sea, the shore."
    phrases = set()
    for seed in range(20):
        for _, rec in pairs_for_poem({"text": text, "tags": []}, SynthConfig(per_poem=8, seed=seed, kinds=["topic"])):
            phrases.add(rec["messages"][0]["content"])
            assert topic_share(text, rec["features"]["topic"]) == 1.0
    assert any("the sea and the sky" in p for p in phrases) and any(p.endswith("the sea.") or "the sea?" in p
                                                                    for p in phrases)


def test_continue_answer_has_two_lines_at_least():
    records, _ = synthesize(POEMS + fixture_poems(), SynthConfig(per_poem=8, kinds=["continue"]))
    assert records and all(len(poem_lines(r["messages"][1]["content"])) >= 2 for r in records)
    short = {"text": "one line\ntwo lines\nthree lines", "title": None, "author": None, "tags": []}
    assert pairs_for_poem(short, SynthConfig(kinds=["continue"])) == []


def test_mix_counts_pairs():
    records, kinds = synthesize(POEMS, SynthConfig(per_poem=8))
    m = mix(records)
    assert m["kind"] == dict(kinds.most_common()) and sum(m["form"].values()) == len(records)
    assert m["form"].get("sonnet") and m["scheme"].get("couplets") and m["scheme"].get("AABBA")


def test_salient_topic_from_text_alone():
    text = "The sea is grey, the sea is cold,\nthe gulls cry over the sea of old."
    assert salient_topic(text) == "the sea"
    assert salient_topic("and the of") is None
    # one use as a noun is enough ("night was"); a word followed by a content word is not taken ("mother walked")
    assert salient_topic("the mother walked home\nand the night was long") == "night"
    assert salient_topic("the dark sea, the wind blows") == "the sea"  # after a modifier; "wind" modifies "blows"
    assert salient_topic("the swift ran fast") is None
    assert salient_topic("fill'd the o'er and the sche") is None  # elisions and Middle English are not topics


def test_title_prompt_drops_trailing_period():
    poem = {"text": "a\nb\nc\nd\ne", "title": "Inconstancy.", "author": None, "tags": []}
    (_, record), = pairs_for_poem(poem, SynthConfig(per_poem=1, kinds=["title"]))
    assert '"Inconstancy"' in record["messages"][0]["content"]


PASSING = "The ship sailed out upon the sea;\nThe sailors sang of home and bread.\nThey drank, and slept, and dreamed of bed."
RETURNING = "The sea is calm tonight, the sea is wide;\nI watch the seas roll in beneath the moon.\nThe sea will keep us."


def test_topic_uses_counts_the_named_topic_by_stem():
    assert topic_uses(RETURNING) == 4          # sea, sea, seas, sea
    assert topic_uses(PASSING) == 1            # "the ship" once
    assert topic_uses("O, and if, but then.") == 0
    assert salient_topic(RETURNING) == "the sea"


def test_select_poems_keeps_poems_about_their_topic_and_caps_them_order_free():
    poems = [{"text": RETURNING}, {"text": PASSING}]
    kept, dropped = select_poems({"train": poems}, SynthConfig(min_topic_uses=2))
    assert kept["train"] == [{"text": RETURNING}] and dropped == {"topic_used_too_rarely": 1}
    kept, dropped = select_poems({"train": poems}, SynthConfig())          # off by default
    assert kept["train"] == poems and not dropped
    many = [{"text": f"{RETURNING}\nLine {i} of the sea."} for i in range(20)]
    cfg = SynthConfig(max_poems=7, seed=3)
    kept, dropped = select_poems({"all": many}, cfg)
    again, _ = select_poems({"all": many[::-1]}, cfg)
    assert len(kept["all"]) == 7 and dropped == {"over_max_poems": 13}
    assert sorted(p["text"] for p in kept["all"]) == sorted(p["text"] for p in again["all"])
    other, _ = select_poems({"all": many}, SynthConfig(max_poems=7, seed=4))
    assert {p["text"] for p in other["all"]} != {p["text"] for p in kept["all"]}
