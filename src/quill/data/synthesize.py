"""Instruction pairs made from poems, so stage 2 (SFT) works offline with any poem corpus.

The rule: a prompt asks only for what its answer measurably has. Each poem is measured once with
:func:`quill.verse.describe.describe` (line count, rhyme scheme, dominant meter, named form), and each
kind of pair names its own feature plus, with chance ``SynthConfig.combine`` each, the other features
that hold ("Write a 12-line poem in rhyming couplets about the sea", "Write an ABAB quatrain in iambic
tetrameter about the moon"):

- ``topic``: "Write a poem about {topic}"; ``style``: "... in the style of {author}" (known authors only);
- ``title``: 'Write a poem titled "{title}"'; ``continue``: the first two lines as the prompt, the rest
  (>= 2 lines) as the answer;
- ``lines``: the true line count (poems of 2-40 lines), as a digit or a number word ("eight-line");
- ``form``: sonnet / haiku / limerick / quatrain / rhyming couplets, only when ``describe`` finds it
  (a sonnet is 14 lines that rhyme like one, not any 14 lines);
- ``scheme``: "rhyming ABAB", "in rhyming couplets", "unrhymed"; ``meter``: "in iambic pentameter".
The topic is a tag, or (``topics.py``) a dictionary word the poem uses at least once as a noun (closing a phrase after
"the/my/thy…", possibly past one modifier: "the dark sea") of the answer's first two lines, so every
answer opens on the subject its prompt names, the first line's words and repeated words first, sometimes two joined by "and" ("the sea and the sky"); only one for
which ``topic_share(answer, topic_words) == 1.0``:
the evaluation's own topic check holds for every pair. Since the evaluation's prompts almost all name a topic,
most pairs do: ``lines`` / ``scheme`` / ``meter`` / ``form`` / ``continue`` pairs name it with chance
``max(combine, 0.8)`` ("Continue this poem about the sea:", the topic of the part to write).
Phrasings stay readable by a prompt parser: form words, line counts as "8 lines" / "8-line" /
"eight-line", schemes in capitals, meters by their usual names.

Each record keeps ``features``: the answer's measured ``lines``, ``stanzas``, ``scheme``, ``meter``,
``form``, the ``kind``, the named ``topic`` words and ``asked`` (what the prompt names, by feature).
Training reads only ``messages``; :func:`truth_rates` re-measures every answer against ``asked``.

Determinism: every choice comes from a ``random.Random`` seeded by the seed and the poem's text, so a
poem gets the same pairs whatever else is in the corpus and in whatever order (same idea as split.py).
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter

from quill.config import SynthConfig
from quill.data.topics import (NUMBER_WORDS, OPENING_LINES, STOPWORDS, abstract, opening_line, topic_candidates,
                               topic_uses)
from quill.verse.adherence import form_met, topic_share
from quill.verse.describe import describe, dominant_meter, scheme_name
from quill.verse.form import poem_lines
from quill.verse.phonetics import words as verse_words

HEADS = ["Write {np}.", "Can you write {np}?", "Compose {np}.", "I'd love {np}.", "Please write {np}."]
STYLE = ["in the style of {author}", "the way {author} would write it"]
TITLE = ['Write a poem titled "{title}".', 'Can you write a poem called "{title}"?']
CONTINUE = ["Continue this poem{about}:\n{opening}", "Here is the start of a poem{about}. Finish it:\n{opening}"]
PAIRED_TOPIC = 0.35        # chance of a two-word topic ("the sea and the sky") when the poem has two
TOPIC_IN_OTHERS = 0.8      # chance that a lines / scheme / meter / form / continue pair also names the topic


def select_poems(splits: dict[str, list[dict]], cfg: SynthConfig) -> tuple[dict[str, list[dict]], Counter]:
    """The poems pairs are made from: those that use their topic at least ``cfg.min_topic_uses`` times
    (:func:`~quill.data.topics.topic_uses`), then at most ``cfg.max_poems`` of them over all splits (the ones
    whose seeded hash of the text is smallest: the same poems whatever the order). Returns (splits, dropped
    by reason)."""
    dropped: Counter = Counter()
    if cfg.min_topic_uses:
        kept = {name: [p for p in rows if topic_uses(p["text"]) >= cfg.min_topic_uses] for name, rows in splits.items()}
        dropped["topic_used_too_rarely"] = sum(len(r) for r in splits.values()) - sum(len(r) for r in kept.values())
        splits = kept
    total = sum(len(r) for r in splits.values())
    if cfg.max_poems is not None and total > cfg.max_poems:
        ranks = {name: [hashlib.sha1(f"{cfg.seed}:select:{p['text']}".encode()).digest() for p in rows]
                 for name, rows in splits.items()}
        cut = sorted(r for rs in ranks.values() for r in rs)[cfg.max_poems - 1]
        splits = {name: [p for p, r in zip(rows, ranks[name]) if r <= cut] for name, rows in splits.items()}
        dropped["over_max_poems"] = total - sum(len(r) for r in splits.values())
    return splits, +dropped


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
    facts = describe(poem["text"])
    topic = _topic(poem, rng)
    candidates = [k for k in cfg.kinds if _applies(k, poem, facts, topic)]
    if cfg.weights:   # a weighted shuffle (Efraimidis-Spirakis: sort by u ** (1 / weight))
        keys = {k: rng.random() ** (1.0 / cfg.weights.get(k, 1.0)) for k in candidates}
        candidates.sort(key=lambda k: -keys[k])
    else:
        rng.shuffle(candidates)
    out = []
    for kind in candidates[:cfg.per_poem]:
        prompt, answer, asked = _make(kind, poem, facts, topic, rng, cfg.combine)
        measured = facts if answer == poem["text"] else describe(answer)
        record = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
        for key in ("title", "author"):
            if poem.get(key):
                record[key] = poem[key]
        record["features"] = {"kind": kind, **{k: measured[k] for k in ("lines", "stanzas", "scheme", "meter",
                                                                         "form")},
                              "topic": asked.get("topic", []), "asked": asked}
        out.append((kind, record))
    return out


def _applies(kind: str, poem: dict, facts: dict, topic: tuple | None) -> bool:
    if kind == "topic":
        return topic is not None
    if kind == "style":
        return bool(poem.get("author"))
    if kind == "title":
        return bool(poem.get("title")) and len(poem["title"]) <= 80
    if kind == "continue":
        return facts["lines"] >= 4  # two lines of opening, at least two of answer
    if kind == "lines":
        return 2 <= facts["lines"] <= 40
    if kind in ("form", "scheme", "meter"):
        return facts[kind] is not None
    return False


def _make(kind: str, poem: dict, facts: dict, topic: tuple | None, rng: random.Random,
          combine: float) -> tuple[str, str, dict]:
    """(prompt, answer, asked): ``asked`` maps each feature the prompt names to its value."""
    if kind == "continue":
        raw = poem["text"].split("\n")  # cut after the second non-blank line, keeping later stanza breaks
        seen = cut = 0
        while seen < 2:
            seen += bool(raw[cut].strip())
            cut += 1
        answer = "\n".join(raw[cut:]).strip("\n")
        about = _topic({"text": answer, "tags": poem.get("tags")}, rng)  # a topic of what is left to write
        asked = {"topic": list(about[1])} if about and rng.random() < max(combine, TOPIC_IN_OTHERS) else {}
        prompt = rng.choice(CONTINUE).format(opening="\n".join(raw[:cut]), about=f" about {about[0]}" if asked else "")
        return prompt, answer, asked
    if kind == "title":
        title = (poem.get("title") or "").rstrip(".").strip()  # 'titled "Inconstancy."?' reads badly
        return rng.choice(TITLE).format(title=title), poem["text"], {"title": title}
    asked: dict = {}
    form = facts["form"] if kind == "form" else None
    if form:
        asked["form"] = form
        if form == "couplets":
            asked["scheme"] = "couplets"
    if kind == "style":
        asked["author"] = poem["author"]
    if kind in ("scheme", "meter"):
        asked[kind] = facts[kind]
    if kind == "lines" or (form in (None, "couplets") and 2 <= facts["lines"] <= 40 and rng.random() < combine):
        asked["lines"] = facts["lines"]
    if (form in (None, "quatrain") and facts["scheme"] and "scheme" not in asked and rng.random() < combine
            and not (form == "quatrain" and facts["scheme"] == "unrhymed")):
        asked["scheme"] = facts["scheme"]
    if form != "haiku" and facts["meter"] and "meter" not in asked and rng.random() < combine:
        asked["meter"] = facts["meter"]
    if topic and (kind == "topic" or rng.random() < (combine if kind == "style" else max(combine, TOPIC_IN_OTHERS))):
        asked["topic"] = list(topic[1])
    return _phrase(asked, topic[0] if topic else None, rng), poem["text"], asked


def _phrase(asked: dict, topic_phrase: str | None, rng: random.Random) -> str:
    """One prompt naming exactly the features in ``asked``, in one of several phrasings."""
    noun = {"sonnet": "sonnet", "haiku": "haiku", "limerick": "limerick", "quatrain": "quatrain"}.get(
        asked.get("form", ""), "poem")
    before, after = [], []
    if "lines" in asked:
        n = asked["lines"]
        count = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) and rng.random() < 0.4 else str(n)
        (before.append(f"{count}-line") if rng.random() < 0.5 else after.append(f"of {count} lines"))
    scheme = asked.get("scheme")
    if scheme == "couplets":
        after.append(rng.choice(["in rhyming couplets", "in couplets"]))
    elif scheme == "unrhymed":
        before.insert(0, "unrhymed")
    elif scheme and noun == "quatrain" and rng.random() < 0.5:
        before.insert(0, scheme)
    elif scheme:
        after.append(rng.choice(["rhyming {s}", "with the rhyme scheme {s}", "with an {s} rhyme scheme"]
                                ).format(s=scheme))
    if "meter" in asked:
        after.append(f"in {asked['meter']}")
    if "topic" in asked:
        after.append(rng.choice(["about {t}", "on {t}"]).format(t=topic_phrase))
    if "author" in asked:
        after.append(rng.choice(STYLE).format(author=asked["author"]))
    head = " ".join([*before, noun])
    np = f"{_article(head)} {head}" + "".join(
        (", " if i and rng.random() < 0.3 and part.startswith(("in ", "rhyming")) else " ") + part
        for i, part in enumerate(after))
    return rng.choice(HEADS).format(np=np)


def _article(phrase: str) -> str:
    first = phrase.split("-")[0].split()[0]
    if first[0].isdigit():
        return "an" if first.startswith("8") or first in ("11", "18") else "a"
    return "an" if first[0].lower() in "aeiou" else "a"


def _topic(poem: dict, rng: random.Random) -> tuple[str, tuple[str, ...]] | None:
    """(phrase, topic words): a tag the poem is about (lower-cased, '&' -> 'and'), else its best noun
    ("the sea"), sometimes with the next best ("the sea and the sky"); either way every topic word passes
    the evaluation's ``topic_share`` on the poem."""
    tags = [t for t in poem.get("tags") or [] if len(t) <= 40]
    rng.shuffle(tags)
    for tag in tags:
        phrase = tag.lower().replace("&", "and").strip()
        topic_words = tuple(w for w in verse_words(phrase) if w not in STOPWORDS)
        if topic_words and topic_share(poem["text"], list(topic_words)) == 1.0:
            return phrase, topic_words
    found = [w for w in topic_candidates(poem["text"])
             if opening_line(poem["text"], w) < OPENING_LINES and topic_share(poem["text"], [w]) == 1.0]
    if not found:
        return None
    chosen = found[:2] if len(found) > 1 and rng.random() < PAIRED_TOPIC else found[:1]
    return " and ".join(w if abstract(w) else "the " + w for w in chosen), tuple(chosen)


# --------------------------------------------------------------------------- what the data set teaches
TRUTH_CHECKS = {
    "topic": lambda answer, value: topic_share(answer, list(value)) == 1.0,
    "lines": lambda answer, value: len(poem_lines(answer)) == value,
    "form": lambda answer, value: bool(form_met(answer, value)),
    "scheme": lambda answer, value: scheme_name(answer) == value,
    "meter": lambda answer, value: dominant_meter(answer) == value,
}


def truth_rates(records: list[dict]) -> dict[str, dict]:
    """Per named feature: how many pairs name it and the share whose answer, re-measured, has it (1.0)."""
    named: Counter = Counter()
    true: Counter = Counter()
    for rec in records:
        answer = rec["messages"][-1]["content"]
        for feature, value in ((rec.get("features") or {}).get("asked") or {}).items():
            if feature in TRUTH_CHECKS:
                named[feature] += 1
                true[feature] += TRUTH_CHECKS[feature](answer, value)
    return {f: {"named": named[f], "rate": round(true[f] / named[f], 4)} for f in TRUTH_CHECKS if named[f]}


def mix(records: list[dict]) -> dict[str, dict]:
    """Pairs by kind, by the answer's measured form / scheme / meter, and by what the prompts name."""
    out: dict[str, Counter] = {"kind": Counter(), "form": Counter(), "scheme": Counter(), "meter": Counter(),
                               "named": Counter()}
    for rec in records:
        feats = rec.get("features") or {}
        out["kind"][feats.get("kind", "?")] += 1
        out["form"][feats.get("form") or "none"] += 1
        out["scheme"][feats.get("scheme") or "irregular"] += 1
        out["meter"][feats.get("meter") or "none"] += 1
        out["named"].update(list(feats.get("asked") or {}))
    return {k: dict(c.most_common()) for k, c in out.items()}
