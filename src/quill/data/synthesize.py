"""Instruction pairs made from poems, so stage 2 (SFT) works offline with any poem corpus.

Each poem yields up to ``per_poem`` pairs of distinct kinds, chosen among the kinds in ``SynthConfig.kinds``
that honestly apply to it (a poem without an author gets no "in the style of" request):

- ``topic``: "Write a poem about {tag}" from tags/themes; without tags, a topic from the poem's own
  salient words (a frequent non-stopword that follows "the/my/thy…", i.e. probably a noun);
- ``style``: "Write a poem in the style of {author}";   ``title``: 'Write a poem titled "{title}"';
- ``continue``: the first two lines as the prompt, the rest of the poem as the answer;
- ``lines``: "Write a {N}-line poem about {topic}" (poems of 2–40 lines);
- ``form``: only when the shape says so: 14 lines -> sonnet, 3 lines near 5-7-5 syllables -> haiku,
  4 lines -> quatrain, every stanza two lines -> couplets.
The answer is the poem text (for ``continue``: the lines after the prompt).

Determinism: every choice comes from a ``random.Random`` seeded by the seed and the poem's text, so a
poem gets the same pairs whatever else is in the corpus and in whatever order (same idea as split.py).
"""
from __future__ import annotations

import hashlib
import random
import re
from collections import Counter

from quill.config import SynthConfig

PROMPTS = {
    "topic": ["Write a poem about {topic}.", "Can you write a poem about {topic}?",
              "Compose a short poem on {topic}.", "I'd love a poem about {topic}."],
    "style": ["Write a poem in the style of {author}.", "Can you write a poem for me in the style of {author}?",
              "Compose a poem the way {author} would."],
    "title": ['Write a poem titled "{title}".', 'Can you write a poem called "{title}"?'],
    "continue": ["Continue this poem:\n{opening}", "Here is the start of a poem. Finish it:\n{opening}"],
    "lines": ["Write a {n}-line poem about {topic}.", "Write a poem of {n} lines about {topic}."],
    "form": ["Write a {form} about {topic}.", "Can you write a {form} about {topic}?"],
}
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each even ever every few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself just let
like made make may me might more most much must my myself never no nor not now o of off oft on once one
only or other our ours out over own said same say see shall she should so some still such than that the
their theirs them then there these they this those thou thee thy thine ye yet through till to too under
until up upon us very was we were what when where which while who whom whose why will with would you
your yours yourself hath doth art wert shalt wilt canst dost thus ere nay yea oh ah lo 'tis twas o'er
e'er ne'er come came go went know knew old new shall every many long away back well day things thing
little great good sweet fair dear young last first whole poor true best least next far full ever
""".split())
_DETERMINERS = frozenset("the a an my thy his her our their your its this that these those".split())
_WORD = re.compile(r"[a-z][a-z']+")
TOPIC_CHARS = 2000


def synthesize(poems: list[dict], cfg: SynthConfig) -> tuple[list[dict], Counter]:
    """Poem records -> instruction records. Returns (records, count of pairs by kind)."""
    records: list[dict] = []
    kinds: Counter = Counter()
    for poem in poems:
        for kind, record in pairs_for_poem(poem, cfg):
            records.append(record)
            kinds[kind] += 1
    return records, kinds


def pairs_for_poem(poem: dict, cfg: SynthConfig) -> list[tuple[str, dict]]:
    """Up to ``cfg.per_poem`` (kind, record) pairs for one poem, of distinct applicable kinds."""
    digest = hashlib.sha1(f"{cfg.seed}:{poem['text']}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    lines = [ln for ln in poem["text"].split("\n") if ln.strip()]
    topic = _topic(poem, rng)
    candidates = [k for k in cfg.kinds if _applies(k, poem, lines, topic)]
    rng.shuffle(candidates)
    out = []
    for kind in candidates[:cfg.per_poem]:
        prompt, answer = _make(kind, poem, lines, topic, rng)
        record = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
        for key in ("title", "author"):
            if poem.get(key):
                record[key] = poem[key]
        out.append((kind, record))
    return out


def _applies(kind: str, poem: dict, lines: list[str], topic: str | None) -> bool:
    if kind == "topic":
        return topic is not None
    if kind == "style":
        return bool(poem.get("author"))
    if kind == "title":
        return bool(poem.get("title")) and len(poem["title"]) <= 80
    if kind == "continue":
        return len(lines) >= 4
    if kind == "lines":
        return topic is not None and 2 <= len(lines) <= 40
    if kind == "form":
        return topic is not None and detect_form(poem["text"]) is not None
    return False


def _make(kind: str, poem: dict, lines: list[str], topic: str | None, rng: random.Random) -> tuple[str, str]:
    template = rng.choice(PROMPTS[kind])
    if kind == "continue":
        # cut after the second non-blank line, keeping the rest's stanza breaks intact
        raw = poem["text"].split("\n")
        seen = cut = 0
        while seen < 2:
            seen += bool(raw[cut].strip())
            cut += 1
        return template.format(opening="\n".join(raw[:cut])), "\n".join(raw[cut:]).strip("\n")
    title = (poem.get("title") or "").rstrip(".").strip()  # 'titled "Inconstancy."?' reads badly
    fields = {"topic": topic, "author": poem.get("author"), "title": title, "n": len(lines),
              "form": detect_form(poem["text"]) if kind == "form" else None}
    return template.format(**fields), poem["text"]


def _topic(poem: dict, rng: random.Random) -> str | None:
    """A tag when there are tags (lower-cased, '&' -> 'and'), else salient words of the text."""
    tags = [t for t in poem.get("tags") or [] if len(t) <= 40]
    if tags:
        return rng.choice(tags).lower().replace("&", "and")
    return salient_topic(poem["text"])


def salient_topic(text: str) -> str | None:
    """"the sea" for a poem about the sea: the most frequent non-stopword seen after a determiner
    (a cheap noun detector), else the most frequent non-stopword; None for a text without words."""
    # the opening is enough to say what a poem is about, and keeps epics from dominating the run time
    words = _WORD.findall(text[:TOPIC_CHARS].lower().replace("\u2019", "'"))
    content = Counter(w for w in words if w not in STOPWORDS and len(w) > 2)
    if not content:
        return None
    first = {}
    for i, w in enumerate(words):
        first.setdefault(w, i)  # ties go to the word that comes first
    nouns = Counter(w for prev, w in zip(words, words[1:]) if prev in _DETERMINERS and w in content)
    if nouns:
        return "the " + max(nouns, key=lambda w: (nouns[w] + content[w], -first[w]))
    return max(content, key=lambda w: (content[w], -first[w]))


def syllables(word: str) -> int:
    """Rough English syllable count (vowel groups, silent final e): good enough to recognise a haiku."""
    word = re.sub(r"[^a-z]", "", word.lower())
    if not word:
        return 0
    count = len(re.findall(r"[aeiouy]+", word))
    if word.endswith("e") and not word.endswith(("le", "ee")) and count > 1:
        count -= 1
    return max(1, count)


def detect_form(text: str) -> str | None:
    """The named form the poem's shape clearly has, or None (we never guess beyond line counts)."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    stanzas = [s for s in re.split(r"\n\s*\n", text.strip()) if s.strip()]
    if len(lines) == 14:
        return "sonnet"
    if len(lines) == 3:
        counts = [sum(syllables(w) for w in ln.split()) for ln in lines]
        if all(abs(c - t) <= 1 for c, t in zip(counts, (5, 7, 5))):
            return "haiku"
    if len(lines) == 4:
        return "quatrain"
    if len(stanzas) >= 2 and all(len([ln for ln in s.split("\n") if ln.strip()]) == 2 for s in stanzas):
        return "poem in couplets"
    return None
