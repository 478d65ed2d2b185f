"""From prepared records to batches: tokenize once (``quill.data.encode``), pack (or group by length), collate
to tensors.
"""
from __future__ import annotations

import torch

from quill.data.encode import Encoded, encode_split
from quill.data.pack import IGNORE_INDEX, Sequence, make_batches


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
