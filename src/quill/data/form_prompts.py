"""Requests that name a poem's shape, for ``quill pairs --prompts forms``: haiku, limericks, sonnets, quatrains,
couplets, rhyme schemes, meters and line counts, each about a topic.

Why: the instruction data synthesized from a corpus asks only for what its passages have, and Gutenberg
passages seldom are haiku or limericks, so the poet rarely sees a request for a form it then has to keep.
These requests are its practice set. They are kept apart from the eval suite so the evaluation stays honest:
none of their topics is a topic word of a suite prompt (``eval_topics``, read with the same
``topic_words`` the topic metric uses), and any request equal to a suite prompt is dropped by the caller.

Every phrasing is read back by ``quill.verse.forms.read_prompt`` (what form-aware decoding and the poetic
score see) as the shape it names; tests/test_form_prompts.py checks each one.
"""
from __future__ import annotations

import random

from quill.verse.score import topic_words

# (phrasing, what read_prompt must find in it); {t} is the topic.
PHRASINGS: tuple[tuple[str, dict], ...] = (
    ("Give me a haiku on {t}.", {"form": "haiku"}),
    ("Write a haiku about {t}.", {"form": "haiku"}),
    ("Compose a limerick about {t}.", {"form": "limerick"}),
    ("A limerick about {t}, please.", {"form": "limerick"}),
    ("Write a sonnet about {t}.", {"form": "sonnet"}),
    ("Write a sonnet on {t} in iambic pentameter.", {"form": "sonnet", "meter": "iambic pentameter"}),
    ("Write a quatrain about {t}.", {"form": "quatrain", "lines": 4}),
    ("Write a quatrain rhyming AABB about {t}.", {"form": "quatrain", "lines": 4, "rhyme": "AABB"}),
    ("Write a poem in rhyming couplets about {t}.", {"form": "couplets", "rhyme": "couplets"}),
    ("Write three rhyming couplets about {t}.", {"form": "couplets", "rhyme": "couplets", "lines": 6}),
    ("Write a poem rhyming ABAB about {t}.", {"rhyme": "ABAB"}),
    ("Write an eight-line poem rhyming ABAB CDCD about {t}.", {"lines": 8, "rhyme": "ABABCDCD"}),
    ("Write a six-line poem about {t}.", {"lines": 6}),
    ("Write a poem of exactly four lines about {t}.", {"lines": 4}),
    ("Write a twelve-line poem about {t}.", {"lines": 12}),
    ("Write a poem in iambic tetrameter about {t}.", {"meter": "iambic tetrameter"}),
)

TOPICS = (
    "a lighthouse", "an old oak", "the harvest", "a lantern", "an owl", "the first snow", "an orchard",
    "a church bell", "a fire in the hearth", "a quiet forest", "a stone bridge", "an old clock", "a letter",
    "a mirror", "a meadow", "a storm", "thunder", "a fox", "a horse", "an open window", "a village",
    "the desert", "an island", "a violin", "a swallow", "a rose", "summer", "hunger", "silence", "childhood",
    "my mother", "a friend", "war", "peace", "a long journey", "a train", "the market", "morning coffee",
    "the mountains", "a shepherd", "the harbour", "a kite", "a beehive", "the wheat fields", "a widow",
    "a soldier", "the fog", "a candle maker", "the tide", "an empty house", "a wedding", "the old king",
    "a blackbird", "the north star", "a gravestone", "a lost glove", "the printing press", "a fisherman",
)


def eval_topics(eval_prompts: list[str]) -> set[str]:
    """The topic words of the eval suite's prompts (what its topic metric looks for)."""
    return {w for p in eval_prompts for w in topic_words(p)}


def form_prompts(eval_prompts: list[str], seed: int = 0) -> list[str]:
    """Every phrasing with every topic whose words are not suite topic words, shuffled with ``seed``."""
    held = eval_topics(eval_prompts)
    topics = [t for t in TOPICS if not set(topic_words(f"about {t}")) & held]
    out = [phrasing.format(t=t) for phrasing, _ in PHRASINGS for t in topics]
    random.Random(seed).shuffle(out)
    return out
