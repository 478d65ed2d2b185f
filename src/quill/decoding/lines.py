"""Form-aware decoding, one line at a time: what a row may sample next, and what happens when a line ends.

A row with a ``FormSpec`` decodes its answer line by line. While a line is being written, its logits are
shaped (``LineState.shape``):
- a token that mixes a line break with other text (``".\\n"``, ``"\\nThe"``), or that no line of verse holds
  (digits, markup), is never sampled, so every line
  ends on a pure line-break token (``"\\n"``, ``"\\n\\n"``) and its text is known exactly;
- the end-of-turn token is forbidden before the last line, and a line break before the line has its
  fewest syllables (a haiku's 5, a pentameter's 9) or, where the line must rhyme, before its last word
  rhymes with the partner line (or, where a later line must rhyme with it, before it ends on a word that
  has rhymes at all);
- once the line is long enough, words that rhyme with the partner get a logit bonus (``RHYME_BONUS``),
  so a try that rhymes is likely instead of lucky; when one more word would make the line too long, and
  on the line's last try, only rhyming words (and then a line break) are left where a rhyme can be made;
- the request's topic words get a small bonus (``TOPIC_BONUS``) until the poem has used them.
When a line ends it is judged (``quill.verse.forms.judge_line``: rhyme, syllables, meter, no repeat). A
line that fails is tried again from the state at the start of that line, up to ``retries`` times; then
the best-scoring try is kept. After the last line, end-of-turn is forced.

The retries need the KV cache as it was at the start of the line: the batch loop (``decoding/batch.py``)
keeps a rejected try's entries in the cache but masks them out of attention for that row (and continues
its position ids from the line start), which for the model is the same as never having seen them, and
works for every row of a batch independently.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import pronouncing
import torch

from quill.verse.forms import MIN_RHYMES, WEAK_ENDS, FormSpec, end_word, judge_line, rhyme_count, whole_word
from quill.verse.phonetics import line_syllables, rhymes, words

RHYME_BONUS = 4.0          # logits added to words that rhyme with the partner, once a line is long enough
NEWLINE_BONUS = 2.0        # logits added to a line break once a line may end
TOPIC_BONUS = 1.5          # logits added to the request's topic words until the poem has used them
METER_TRIES = 2            # tries of a line that misses only its meter
MAX_LINE_TOKENS = 32       # a try with no line break by then ends (and is judged as it is)
FREE_TAIL_TOKENS = 24      # free verse: end-of-turn is forced at the first line end this close to the budget
_WORD_TOKEN = re.compile(r"^ ?[A-Za-z][a-z']*$")
_JUNK = re.compile(r"[0-9_/\\|<>{}\[\]@#$%^&*=+~`\t]|\S\s{2,}|^\s{2,}\S|^ +$")  # digits, markup, runs of spaces
_LINE_END_PUNCT = set(",.;:!?-'\")")


class Vocabulary:
    """What form-aware decoding needs to know about a tokenizer's tokens, computed once per engine."""

    def __init__(self, tokenizer, vocab_size: int):
        texts = tokenizer.batch_decode([[i] for i in range(min(vocab_size, len(tokenizer)))],
                                       skip_special_tokens=False, clean_up_tokenization_spaces=False)
        special = set(tokenizer.all_special_ids)
        self.newline = [i for i, t in enumerate(texts) if "\n" in t and not t.strip() and i not in special]
        self.banned = [i for i, t in enumerate(texts) if ("\n" in t and t.strip())
                       or (_JUNK.search(t) and "\n" not in t and i not in special)]
        self.word_ids: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            if i not in special and t.startswith(" ") and _WORD_TOKEN.match(t):
                self.word_ids.setdefault(t[1:].lower(), []).append(i)
        self.size = vocab_size
        self.newline_t = torch.tensor(self.newline, dtype=torch.long)
        self.newline_set = frozenset(self.newline)
        self.banned_t = torch.tensor(self.banned, dtype=torch.long)
        self._rhyme_cache: dict[str, torch.Tensor] = {}
        self._rhymable: torch.Tensor | None = None

    def rhymable(self) -> torch.Tensor:
        """Ids of word-start tokens whose word has at least ``MIN_RHYMES`` rhymes (computed on first use)."""
        if self._rhymable is None:
            ids = [i for w, ids in self.word_ids.items() if whole_word(w) and rhyme_count(w) >= MIN_RHYMES
                   for i in ids]
            self._rhymable = torch.tensor(sorted(ids), dtype=torch.long)
        return self._rhymable

    def rhyme_tokens(self, word: str) -> torch.Tensor:
        """Ids of word-start tokens whose word rhymes with ``word`` (as ``phonetics.rhymes`` decides)."""
        if word not in self._rhyme_cache:
            cands = {w for w in _dictionary_rhymes(word) if w in self.word_ids and whole_word(w)}
            ids = [i for w in sorted(cands) if rhymes(word, w) for i in self.word_ids[w]]
            self._rhyme_cache[word] = torch.tensor(ids, dtype=torch.long)
        return self._rhyme_cache[word]


@lru_cache(maxsize=20_000)
def _dictionary_rhymes(word: str) -> tuple[str, ...]:
    return tuple(pronouncing.rhymes(word))


@dataclass
class Try:
    ids: list[int]            # the line's tokens (without its end token)
    cols: list[int]           # the cache columns they were fed at
    end: int                  # the token that ended it (a line break, or end-of-turn)
    text: str
    score: float


@dataclass
class LineState:
    """One row's progress through its form: accepted lines, the try being written, the tries so far."""
    spec: FormSpec
    retries: int
    stop_ids: list[int]
    budget: int                               # answer tokens allowed
    lines: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)    # the current try's tokens
    cols: list[int] = field(default_factory=list)
    tries: list[Try] = field(default_factory=list)
    output: list[int] = field(default_factory=list)  # accepted tokens, line breaks included
    text: str = ""                            # the current try's text
    resampled: int = 0
    topic: list[str] = field(default_factory=list)   # the request's topic words not yet in the poem

    @property
    def index(self) -> int:
        return len(self.lines)

    @property
    def last_line(self) -> bool:
        return self.spec.lines is not None and self.index == self.spec.lines - 1

    def may_end(self) -> tuple[bool, str]:
        """(whether the current line may end now, the word it must rhyme with or '')."""
        if not self.text.strip():
            return False, ""
        n = line_syllables(self.text)
        if n < self.spec.syllable_range(self.index)[0]:
            return False, ""
        end = end_word(self.text)
        if end in WEAK_ENDS or not (whole_word(end) or self.text.rstrip()[-1] in _LINE_END_PUNCT):
            return False, ""      # "... with the", or maybe half a word ("Ca" of "Carhea"): not over yet
        partner = self.spec.partner(self.index)
        if partner is not None and partner < len(self.lines):
            target = end_word(self.lines[partner])
            return rhymes(end, target), target
        if self.spec.opens(self.index):
            return rhyme_count(end) >= MIN_RHYMES, ""
        return True, ""

    def shape(self, logits: torch.Tensor, vocab: Vocabulary) -> None:
        """Constrain one row's next-token logits [V] in place (see the module docstring)."""
        neg = float("-inf")
        if len(vocab.banned):
            logits[vocab.banned_t] = neg
        ok, target = self.may_end()
        stop_allowed = ok and (self.last_line or (self.spec.lines is None and bool(self.lines)))
        if not stop_allowed:
            logits[self.stop_ids] = neg
        if not ok:
            logits[vocab.newline_t] = neg
        else:   # a line that has just found its rhyme should end on it
            logits[vocab.newline_t] += RHYME_BONUS if target else NEWLINE_BONUS
        if self.topic:
            used = set(words(self.text)) | {w for ln in self.lines for w in words(ln)}
            self.topic = [w for w in self.topic if w not in used]
            for w in self.topic:
                ids = vocab.word_ids.get(w)
                if ids:
                    logits[ids] += TOPIC_BONUS
        lo = self.spec.syllable_range(self.index)[0]
        n = line_syllables(self.text)
        ready = n >= max(1, lo - 2)
        rhyme_ids = vocab.rhyme_tokens(target) if target and ready else None
        if rhyme_ids is not None and len(rhyme_ids):
            logits[rhyme_ids] += RHYME_BONUS
        last_try = ready and self.retries > 1 and len(self.tries) == self.retries - 1
        closing = n >= self.spec.syllable_range(self.index)[1] - 2    # a word or two more and the line is too long
        if not (last_try or closing):
            return
        # where the line can end as asked, it does; where a word can make it so, only such words are left
        keep = None
        if ok:
            keep = vocab.newline_t if not stop_allowed else torch.cat([vocab.newline_t, torch.tensor(self.stop_ids)])
        elif rhyme_ids is not None and len(rhyme_ids):
            keep = rhyme_ids
        elif self.spec.opens(self.index) and n >= lo:
            keep = vocab.rhymable()
        if keep is not None and len(keep):
            kept = logits[keep].clone()
            logits.fill_(neg)
            logits[keep] = kept

    def too_long(self) -> bool:
        """The try must end now: past its syllables, past ``MAX_LINE_TOKENS``, or past its share of the
        budget (what is left over the lines still to write), so the last line always fits."""
        cap = MAX_LINE_TOKENS
        if self.spec.lines is not None:
            cap = min(cap, max(4, (self.budget - len(self.output)) // (self.spec.lines - self.index) - 1))
        return len(self.ids) >= cap or line_syllables(self.text) > self.spec.syllable_range(self.index)[1] + 2

    def end_line(self, end: int) -> tuple[str, Try, list[Try]]:
        """The current try ended with token ``end``. Returns (action, try, the line's tries): ``retry`` (start
        the line again: the caller masks the try's columns out), or ``accept`` / ``finish`` with the kept try
        (the best-scoring one, maybe an earlier try: the caller masks every other try and unmasks it)."""
        score = judge_line(self.spec, self.index, self.text, self.lines) if self.text.strip() else 0.0
        current = Try(self.ids, self.cols, end, self.text, score)
        self.tries.append(current)
        if score < 1.0 and len(self.tries) < self.retries and not self._meter_only_miss():
            self.resampled += 1
            self._reset_try()
            return "retry", current, self.tries
        tries, self.tries = self.tries, []
        best = max(tries, key=lambda t: t.score)   # the first of equal scores: the earliest try
        self.lines.append(best.text.strip())
        self.output += best.ids + [best.end]
        self._reset_try()
        done = (self.spec.lines is not None and len(self.lines) >= self.spec.lines) or best.end in self.stop_ids
        if self.spec.lines is None and len(self.output) >= self.budget - FREE_TAIL_TOKENS:
            done = True
        return ("finish" if done else "accept"), best, tries

    def _meter_only_miss(self) -> bool:
        """A line that meets everything but the meter is tried again only ``METER_TRIES`` times: a small model
        scans about half its lines, and chasing stresses over four tries costs more than it gains."""
        return (self.spec.meter is not None and len(self.tries) >= METER_TRIES
                and judge_line(self.spec, self.index, self.text, self.lines, meter=False) == 1.0)

    def _reset_try(self) -> None:
        self.ids, self.cols, self.text = [], [], ""
