"""What a poem is about, found in its own words: the topic of a synthesized "Write a poem about ..." pair.

A topic is a noun-like word the poem actually uses: a dictionary word (not a stopword, an elision or a bare
adjective) that closes a noun phrase at least once ("the sea,", "my love is", "the dark sea"), ranked by how
often the poem uses it. Why taken from the poem rather than guessed: a prompt may name only what its answer
has, so every topic passes the evaluation's ``topic_share`` check on the poem it came from; a topic the poem
never mentions would teach the model that "about X" need not be about X.
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from quill.verse.adherence import stem
from quill.verse.forms import NUMBER_WORDS as verse_numbers
from quill.verse.phonetics import phones

NUMBER_WORDS = tuple(verse_numbers)        # "zero" ... "twenty", the words a prompt parser reads back
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each even ever every few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself just let
like made make may me might more most much must my myself never no nor not now o of off oft on once one
only or other our ours out over own said same say see shall she should so some still such than that the
their theirs them then there these they this those thou thee thy thine ye yet through till to too under
until up upon us very was we were what when where which while who whom whose why will with would you
your yours yourself hath doth art wert shalt wilt canst dost thus ere nay yea oh ah lo 'tis twas o'er
e'er ne'er tis twas wilt hast didst hadst art ay aye come came go went know knew old new shall every many long away back well day things thing
little great good sweet fair dear young last first whole poor true best least next far full ever
""".split())
_DETERMINERS = frozenset("the a an my thy thine mine his her our their your its this these those every each no"
                         .split())  # not "that": as often a relative pronoun ("that shines")
_NOT_TOPICS = frozenset(NUMBER_WORDS) | frozenset("""way side part kind sort end rest half sake manner lot
green gray grey white black red blue golden bright soft swift mighty proud deep high low wild pale silent gentle
fierce bold brave noble holy sad glad dull fairest sooner sublime steep wide vast strange honest bland""".split())
# ^ adjectives that poems use bare ("the swift", "the green"): "a poem about the swift" misleads
_TOKEN = re.compile(r"[a-z][a-z']*|[^a-z\s']|\n")
_ABSTRACT = frozenset("""love life death time hope joy grief woe peace war faith fear sorrow beauty truth pain fate
youth age memory nature silence sleep glory honour honor pride shame despair music heaven hell mercy grace
fame wisdom loss longing solitude courage anger desire innocence regret friendship childhood freedom liberty
happiness sadness loneliness darkness light spring summer autumn winter twilight midnight dawn night""".split())
TOPIC_CHARS = 2000
OPENING_LINES = 2     # a synthesized topic is a word of the answer's first two lines


def salient_topic(text: str) -> str | None:
    """"the sea" for a poem about the sea ("love" for one about love): the best of :func:`topic_candidates`,
    None when it has none."""
    found = topic_candidates(text)
    if not found:
        return None
    return found[0] if abstract(found[0]) else "the " + found[0]


def abstract(word: str) -> bool:
    """Named without an article: "a poem about love", "about sadness" (but "about the sea")."""
    return word in _ABSTRACT or (word.endswith("ness") and len(word) > 6)


def topic_candidates(text: str) -> list[str]:
    """Words the poem is about, best first: dictionary words (not stopwords, not elisions like "fill'd" nor
    Middle English spellings like "sche") used at least once as a noun, i.e. closing a noun phrase right
    after a determiner or possessive ("the sea,", "my love is") or after one modifier that follows one
    ("the dark sea"). A cheap noun detector: a word followed by another content word ("the wind blows",
    "the dark ...") is a modifier or the subject of a verb phrase and is not taken there. Ranked by how
    often the poem uses the word (counted by stem, so "wave" and "waves" add up), then by its first place;
    words of the poem's first line come first, then those of its second, then the rest."""
    toks = _tokens(text)
    content = [t != "|" and t not in STOPWORDS for t in toks]
    stems = Counter(stem(t) for t, c in zip(toks, content) if c and _topic_word(t))
    slots: Counter = Counter()
    modifies: Counter = Counter()  # "the soft hand": used as a modifier, more likely an adjective
    first: dict[str, int] = {}
    for i, w in enumerate(toks):
        if not content[i] or not _topic_word(w):
            continue
        after_det = i >= 1 and toks[i - 1] in _DETERMINERS
        if i + 1 < len(toks) and content[i + 1]:
            modifies[w] += after_det
            continue
        after_mod = (i >= 2 and toks[i - 2] in _DETERMINERS and content[i - 1]
                     and not (len(w) >= 5 and w.endswith("ed")))  # "the gift bestowed": a participle
        if after_det or after_mod:
            slots[w] += 1
            first.setdefault(w, i)
    # words of the first line first, then of the second: a poem that opens on its subject teaches the poet to
    # do the same (plain decoding writes only a few lines)
    ranked = sorted(slots, key=lambda w: (opening_line(text, w), -(stems[stem(w)] + slots[w] - 2 * modifies[w]),
                                          first[w]))
    out, seen = [], set()
    for w in ranked:  # one word a stem: "wave" and "waves" are one topic
        if stem(w) not in seen:
            seen.add(stem(w))
            out.append(w)
    return out


def topic_uses(text: str) -> int:
    """How many times the poem uses its topic (the best of :func:`topic_candidates` in its opening lines, the
    one a synthesized pair names), counted by stem ("wave" and "waves" add up); 0 when it has none. A passage
    that names "the heart" once in passing is not about the heart; one that comes back to it is."""
    found = [w for w in topic_candidates(text) if opening_line(text, w) < OPENING_LINES]
    if not found:
        return 0
    st = stem(found[0])
    return sum(stem(t) == st for t in _tokens(text))


def opening_line(text: str, word: str) -> int:
    """0 when ``word`` is a word of the poem's first line, 1 of its second, 2 otherwise."""
    for i, line in enumerate(text.split("\n")[:OPENING_LINES]):
        if word in _tokens(line):
            return i
    return OPENING_LINES


def _tokens(text: str) -> list[str]:
    """Lower-cased words of the poem's opening, with "|" for each punctuation mark and line end (a noun
    phrase ends there). The opening is enough to say what a poem is about and keeps epics fast."""
    out = []
    for m in _TOKEN.finditer(text[:TOPIC_CHARS].lower().replace("\u2019", "'")):
        t = m.group()
        out.append(t.strip("'") if t[0].isalpha() else "|")
    return out


@lru_cache(maxsize=1 << 16)
def _topic_word(w: str) -> bool:
    return (len(w) > 2 and "'" not in w and w not in STOPWORDS and w not in _NOT_TOPICS
            and not (len(w) >= 6 and w.endswith("ly")) and bool(phones(w)))
