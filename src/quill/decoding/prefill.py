"""The first prefill of a batch, with the prompt prefix most rows share computed once.

Chat prompts start with the same template text (SmolLM2's: a 24-token system message and user header before
the request), and a batch left-pads every prompt to its longest. Of the eval suite's first prefill (144 rows
padded to 53 tokens) about 70% is that shared prefix or padding; computed as below it is 45% smaller.

The prefix is run for one row and its key/values copied to every row: with each row's position ids counted
from its own first token, those columns are identical in every row that has the prefix. The remaining tokens
of every row then run in one left-padded forward; a row without the prefix (a raw prompt) has those columns
masked out, so it decodes as it would alone.
"""
from __future__ import annotations

import torch

MIN_SHARED_PREFIX = 8      # prompt tokens several rows must share before their prefix is computed once


def shared_prefix(prompts: list[list[int]]) -> tuple[int, list[bool]]:
    """(P, which rows have it): the longest prefix common to the rows that share the batch's most common
    first ``MIN_SHARED_PREFIX`` tokens (a chat template's system message, say), leaving each of them at least
    one token of its own; (0, all False) when fewer than two rows share one that long."""
    heads: dict[tuple, int] = {}
    for p in prompts:
        if len(p) > MIN_SHARED_PREFIX:
            key = tuple(p[:MIN_SHARED_PREFIX])
            heads[key] = heads.get(key, 0) + 1
    if not heads or max(heads.values()) < 2:
        return 0, [False] * len(prompts)
    head = list(max(heads, key=heads.get))
    has = [len(p) > MIN_SHARED_PREFIX and p[:MIN_SHARED_PREFIX] == head for p in prompts]
    group = [p for p, h in zip(prompts, has) if h]
    limit, n = min(len(p) for p in group) - 1, MIN_SHARED_PREFIX
    while n < limit and all(p[n] == group[0][n] for p in group):
        n += 1
    return n, has


def prefill_shared(model, cache, prompts: list[list[int]], end: int, pad_id: int, device
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The batch's first prefill with the rows' shared prefix computed once: the prefix for one row, its
    key/values copied to every row (cache columns [0, P): positions 0..P-1 are the same in every row), then
    each row's remaining tokens (the whole prompt for rows without the prefix, which never see it), left-padded
    to end at column ``end``. Returns (logits, mask [rows, end]), or None when no prefix is worth sharing."""
    n, has = shared_prefix(prompts)
    rest = [p[n:] if h else p for p, h in zip(prompts, has)]
    if n == 0 or max(len(r) for r in rest) > end - n:
        return None
    model(input_ids=torch.tensor([prompts[has.index(True)][:n]], device=device), cache=cache, use_cache=True,
          logits_to_keep=1)
    cache.batch_select_indices(torch.zeros(len(prompts), dtype=torch.long, device=device))
    w = end - n
    ids = torch.full((len(prompts), w), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), end), dtype=torch.long)
    positions = torch.zeros((len(prompts), w), dtype=torch.long)
    for j, (r, h) in enumerate(zip(rest, has)):
        ids[j, w - len(r):] = torch.tensor(r)
        mask[j, :n] = int(h)
        mask[j, end - len(r):] = 1
        positions[j, w - len(r):] = torch.arange(len(r)) + (n if h else 0)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].float().cpu(), mask
