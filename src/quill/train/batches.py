"""From prepared records to batches: tokenize once (``quill.data.encode``), pack (or group by length), collate
to tensors.
"""
from __future__ import annotations

import torch

from quill.data.encode import Encoded, encode_split
from quill.data.pack import IGNORE_INDEX, Sequence, make_batches
from quill.data.pairs import Pair, encode_pairs


def collate(seqs: list[Sequence], pad_id: int, rows: int = 0, width: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row. No attention mask is needed, on purpose:

    attention is causal, so real tokens never look at the padding that follows them, and padding carries
    label -100. Passing ``attention_mask=None`` with restarting ``position_ids`` is also what makes the
    model build the block-diagonal mask that keeps packed examples apart.

    ``rows``/``width``: pad to at least this shape, with rows of padding (no loss) — compiled blocks then see
    one shape for every micro-batch, the short last one included, and do not recompile for a new shape.

    Preference pairs (a dpo stage): :func:`collate_pairs`.
    """
    if seqs and isinstance(seqs[0], Pair):
        return collate_pairs(seqs, pad_id, rows, width)
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


def collate_pairs(pairs: list[Pair], pad_id: int, rows: int = 0, width: int = 0) -> dict[str, torch.Tensor]:
    """n pairs -> 2n rows, the chosen rows first, then the rejected ones in the same order (one forward pass),
    with ``ref_logps`` (2n,): the reference's summed answer log-probs (0 where not computed yet). ``rows``
    counts pairs; padding pairs have no target (the loss leaves a pair without answer tokens out)."""
    n = max(rows, len(pairs))
    seqs = [p.chosen for p in pairs] + [Sequence()] * (n - len(pairs)) + \
        [p.rejected for p in pairs] + [Sequence()] * (n - len(pairs))
    batch = collate([s if len(s) else Sequence([pad_id], [IGNORE_INDEX], [0]) for s in seqs], pad_id, 0, width)
    ref = [p.ref_chosen for p in pairs] + [0.0] * (n - len(pairs)) + [p.ref_rejected for p in pairs] + \
        [0.0] * (n - len(pairs))
    batch["ref_logps"] = torch.tensor([0.0 if x is None else x for x in ref], dtype=torch.float32)
    return batch


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


def encode_stage_split(kind: str, records: list[dict], tokenizer, template, train_cfg, dpo=None) -> Encoded:
    """One split tokenized as its stage trains on it: pairs for preferences (``dpo``: the stage's DPOConfig)."""
    if kind == "preferences":
        return encode_pairs(records, tokenizer, template, (dpo and dpo.max_length) or train_cfg.block_size,
                            dpo and dpo.max_prompt)
    return encode_split(kind, records, tokenizer, template, train_cfg.block_size, train_cfg.packing, train_cfg.seed)


def build_loader(kind: str, records: list[dict], tokenizer, template, train_cfg, shuffle: bool = False,
                 micro_batch: int | None = None, dpo=None) -> BatchList:
    """Batches for evaluation (or any single-process loop) of one split, as training builds them."""
    enc = encode_stage_split(kind, records, tokenizer, template, train_cfg, dpo)
    batches = epoch_batches(enc, micro_batch or train_cfg.micro_batch, train_cfg.seed, 0, shuffle, train_cfg.packing)
    return BatchList(enc, batches, pad_id_of(tokenizer))
