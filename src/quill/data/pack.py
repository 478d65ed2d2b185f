"""Turn tokenized examples into training sequences: packed blocks (no cross-attention) or length-grouped batches.

Packing puts several examples into one block of ``block_size`` tokens, so no compute is spent on padding.
The examples must not see each other: each one's ``position_ids`` restart at 0, and the model (called with
``attention_mask=None`` and no KV cache) turns that into a block-diagonal causal mask under SDPA and eager
attention, for Llama and GPT-2 alike (tests/test_train_packing.py checks it).

Every example's first token gets label -100: the model's internal shift would otherwise train the last
token of one poem to predict the first token of the next, an association that does not exist.
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

IGNORE_INDEX = -100  # the label that carries no loss: defined once here, used everywhere


@dataclass
class Example:
    """One tokenized example: ids and labels of equal length (labels -100 where no loss)."""
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Sequence:
    """One row of a batch: concatenated examples with their own position ids."""
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)

    def add(self, ex: Example) -> None:
        self.input_ids.extend(ex.input_ids)
        # the first token of an example is never a target: the previous token belongs to another example
        self.labels.extend([IGNORE_INDEX] + list(ex.labels[1:]))
        self.position_ids.extend(range(len(ex)))

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def loss_tokens(self) -> int:
        """Tokens whose label is a target (after the model's shift: labels[1:] != -100)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


def split_long(ex: Example, block_size: int) -> list[Example]:
    """Cut an example longer than a block into block-sized pieces (long poems are continued, not dropped)."""
    if len(ex) <= block_size:
        return [ex]
    return [Example(ex.input_ids[i:i + block_size], ex.labels[i:i + block_size])
            for i in range(0, len(ex), block_size) if len(ex.input_ids[i:i + block_size]) > 1]


def pack_examples(examples: list[Example], block_size: int, seed: int = 0) -> list[Sequence]:
    """Best-fit-decreasing packing into blocks of at most ``block_size`` tokens.

    Examples stay whole (not split across blocks) unless longer than a block: then they are cut in pieces.
    Placing each piece, longest first, into the open block with the least room that still fits keeps
    waste low (typically a few percent) without splitting poems mid-line; a sorted list of free room makes
    it O(n log n). The blocks are shuffled with ``seed`` so that long and short poems mix.
    """
    pieces = [p for ex in examples for p in split_long(ex, block_size)]
    pieces.sort(key=len, reverse=True)
    blocks: list[Sequence] = []
    free: list[tuple[int, int]] = []  # (room left, block index), sorted
    for piece in pieces:
        n = len(piece)
        pos = bisect.bisect_left(free, (n, -1))
        if pos < len(free):
            room, b = free.pop(pos)
        else:
            room, b = block_size, len(blocks)
            blocks.append(Sequence())
        blocks[b].add(piece)
        if room - n > 1:  # a block with room for one token cannot take a useful example
            bisect.insort(free, (room - n, b))
    random.Random(seed).shuffle(blocks)
    return blocks


def unpacked(examples: list[Example], block_size: int) -> list[Sequence]:
    """One example per row, for padded batches grouped by length; an example longer than ``block_size`` is
    cut into block-sized rows (as packing does), so no token of a long poem is lost."""
    out = []
    for ex in examples:
        for piece in split_long(ex, block_size):
            seq = Sequence()
            seq.add(piece)
            out.append(seq)
    return out


def make_batches(seqs: list[Sequence], micro_batch: int, seed: int, shuffle: bool,
                 group_by_length: bool) -> list[list[int]]:
    """Indices of the sequences in each micro-batch, in a fixed order for a given seed.

    With ``group_by_length`` rows of similar length share a batch (little padding); the batches themselves
    are then shuffled so training does not see all short examples first.
    """
    idx = list(range(len(seqs)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(idx)
    if group_by_length:
        # sort within windows of 64 batches: similar lengths together, still randomised across windows
        window = micro_batch * 64
        idx = [i for w in range(0, len(idx), window)
               for i in sorted(idx[w:w + window], key=lambda i: len(seqs[i]))]
    batches = [idx[i:i + micro_batch] for i in range(0, len(idx), micro_batch)]
    if shuffle and group_by_length:
        rng.shuffle(batches)
    return batches
