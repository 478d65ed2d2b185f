"""Tokenizing prepared records: the one place that turns a poem or an instruction pair into training tokens.

Stage 1 (DAPT) and stage 2 (SFT) differ only here, in how an example is tokenized and labelled:
- a poem is its text tokens plus EOS, every token a target (so the model learns where a poem ends);
- an instruction pair is the template-rendered prompt (label -100) followed by the answer and the
  template's end-of-turn token, which keep their labels (so the poet learns to stop).
Everything after that (packing, batching, the loss) is shared. ``quill data inspect`` counts tokens with
the same ``encode_examples`` that training uses.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

from quill.data.cache import cached, load_sequences, save_sequences, tokenizer_fingerprint
from quill.data.pack import Example, Sequence, pack_examples, unpacked
from quill.data.template import encode_texts


@dataclass
class Encoded:
    sequences: list[Sequence]        # or data.pairs.Pair for a dpo stage (two rows each)
    skipped: Counter = field(default_factory=Counter)
    examples: int = 0
    truncated: Counter = field(default_factory=Counter)  # pairs: prompts and answers cut (data.pairs)

    @property
    def loss_tokens(self) -> int:
        return sum(s.loss_tokens for s in self.sequences)

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


def encode_examples(kind: str, records: list[dict], tokenizer, template, max_length: int) -> tuple[list[Example], Counter]:
    """Tokenize records of one split; examples that cannot carry any loss are skipped and counted."""
    skipped: Counter = Counter()
    out: list[Example] = []
    if kind == "poems":
        eos = tokenizer.eos_token_id
        for start in range(0, len(records), 1024):  # in batches: a fast tokenizer encodes a batch in parallel
            chunk = [rec["text"] for rec in records[start:start + 1024]]
            for ids in encode_texts(tokenizer, chunk):
                ids = ids + [eos]
                if len(ids) < 2:
                    skipped["empty_after_tokenizing"] += 1
                    continue
                out.append(Example(ids, list(ids)))
    elif kind == "instructions":
        for rec in records:
            enc = template.encode_example(tokenizer, rec["messages"], max_length)
            if enc is None:
                skipped["no_answer_token_fits"] += 1
                continue
            out.append(Example(enc["input_ids"], enc["labels"]))
    else:
        raise ValueError(f"unknown data kind {kind!r}")
    return out, skipped


def encode_split(kind: str, records: list[dict], tokenizer, template, block_size: int, packing: bool,
                 seed: int = 0, cache: bool = True) -> Encoded:
    """Tokenized, packed sequences of one split; cached on disk, keyed by everything they depend on
    (the records' content, tokenizer, template, block size, packing, seed), so a second run skips the work."""
    def build() -> Encoded:
        examples, skipped = encode_examples(kind, records, tokenizer, template, block_size)
        seqs = pack_examples(examples, block_size, seed) if packing else unpacked(examples, block_size)
        return Encoded(seqs, skipped, len(examples))

    if not cache or not records:
        return build()
    digest = hashlib.sha256(json.dumps(records, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    key = {"what": "encoded-split", "kind": kind, "records": digest, "tokenizer": tokenizer_fingerprint(tokenizer),
           "template": template.to_dict(), "block_size": block_size, "packing": packing, "seed": seed}
    return cached(key, build,
                  save=lambda e, f: save_sequences(e.sequences, f, {"skipped": dict(e.skipped), "examples": e.examples}),
                  load=_load_encoded)


def _load_encoded(folder) -> Encoded:
    seqs, meta = load_sequences(folder)
    return Encoded(seqs, Counter(meta.get("skipped", {})), meta.get("examples", len(seqs)))
