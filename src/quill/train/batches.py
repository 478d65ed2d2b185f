"""From prepared records to batches: tokenize once, pack (or group by length), collate to tensors.

Stage 1 (DAPT) and stage 2 (SFT) differ only here, in how an example is tokenized and labelled:
- a poem is its text tokens plus EOS, every token a target (so the model learns where a poem ends);
- an instruction pair is the template-rendered prompt (label -100) followed by the answer and the
  template's end-of-turn token, which keep their labels (so the poet learns to stop).
Everything after that — packing, batching, the loss — is shared.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import torch

from quill.data.cache import cached, load_sequences, save_sequences, tokenizer_fingerprint
from quill.data.pack import IGNORE_INDEX, Example, Sequence, make_batches, pack_examples, unpacked
from quill.data.template import encode_texts


@dataclass
class Encoded:
    sequences: list[Sequence]
    skipped: Counter = field(default_factory=Counter)
    examples: int = 0

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


def collate(seqs: list[Sequence], pad_id: int, rows: int = 0, width: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row. No attention mask is needed, on purpose:

    attention is causal, so real tokens never look at the padding that follows them, and padding carries
    label -100. Passing ``attention_mask=None`` with restarting ``position_ids`` is also what makes the
    model build the block-diagonal mask that keeps packed examples apart.

    ``rows``/``width``: pad to at least this shape, with rows of padding (no loss) — compiled blocks then see
    one shape for every micro-batch, the short last one included, and do not recompile for a new shape.
    """
    width = max(width, *(len(s) for s in seqs))
    n = max(rows, len(seqs))
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.arange(width, dtype=torch.long).repeat(n, 1)
    for r, s in enumerate(seqs):
        k = len(s)
        ids[r, :k] = torch.tensor(s.input_ids)
        labels[r, :k] = torch.tensor(s.labels)
        pos[r, :k] = torch.tensor(s.position_ids)
        pos[r, k:] = torch.arange(width - k)  # padding is its own pseudo-example: it attends to nothing real
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


def epoch_batches(encoded: Encoded, micro_batch: int, seed: int, epoch: int, shuffle: bool,
                  packing: bool) -> list[list[int]]:
    """The micro-batches of one epoch, identical on every process for a given (seed, epoch)."""
    return make_batches(encoded.sequences, micro_batch, seed=seed * 1000 + epoch, shuffle=shuffle,
                        group_by_length=not packing)


class BatchList:
    """A sized iterable of collated batches (what evaluation code loops over)."""

    def __init__(self, encoded: Encoded, batches: list[list[int]], pad_id: int):
        self.encoded, self.batches, self.pad_id = encoded, batches, pad_id

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            yield collate([self.encoded.sequences[i] for i in b], self.pad_id)


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def build_loader(kind: str, records: list[dict], tokenizer, template, train_cfg, shuffle: bool = False,
                 micro_batch: int | None = None) -> BatchList:
    """Batches for evaluation (or any single-process loop) of one split, as training builds them."""
    enc = encode_split(kind, records, tokenizer, template, train_cfg.block_size, train_cfg.packing, train_cfg.seed)
    batches = epoch_batches(enc, micro_batch or train_cfg.micro_batch, train_cfg.seed, 0, shuffle, train_cfg.packing)
    return BatchList(enc, batches, pad_id_of(tokenizer))
