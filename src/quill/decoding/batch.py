"""Batched decoding: many prompts at once, each row with its own sampling settings, seed and (optionally) form.

Rows are left-padded so every row's next token sits at the same cache column; position ids count each
row's own tokens, so a row decodes as it would alone (up to float rounding; greedy rows match batch 1).
Each row draws from its own generator (seeded by its ``seed``, and for form rows by the line and try),
so a row's poem does not depend on which other rows share its batch.

Form rows (``decoding/lines.py``) may reject a line and start it again: their rejected tokens stay in the
cache, masked out of attention for that row, and the row's positions continue from the line's start.
While a row restarts a line it feeds nothing (a masked pad column) and samples from the logits it saved at
the start of that line. ``decode_batch`` yields (row, text) each time a form row accepts a line, so a
single streamed row shows its lines as they are accepted (held back while they may be resampled), and
(row, None) when a row ends.

With ``slots`` below the number of rows, a row that ends hands its slot to the next waiting one (continuous
batching): the newcomer's prompt is prefilled on its own and its key/values written into the slot's last
cache columns (``decoding/kvcache.py``), the slot's mask hiding what it held before. A batch then costs
about its rows' total tokens over ``slots``, not ``slots`` times its longest row. Once no row is waiting, the
finished ones leave the batch (``_compact``, when they are a quarter of it): the tail of a batch, where a
few long poems outlive the rest, then costs what those rows cost, not what a full batch does.
"""
from __future__ import annotations

import hashlib
import time
from collections import deque
from typing import Callable, Iterator

import torch

from quill.decoding.kvcache import can_place, decode_cache, place
from quill.decoding.lines import LineState, Vocabulary
from quill.decoding.matmul import oriented_linears
from quill.decoding.prefill import prefill_shared
from quill.decoding.sampling import SamplingParams, make_generator, sample_rows
from quill.verse.forms import FormSpec

FORM_TOKENS_PER_LINE = 18   # a form row's answer budget: at least this many tokens per line asked for


def try_seed(seed: int | None, line: int, attempt: int) -> int | None:
    """The seed of one try of one line: tries differ, and a row's tries do not depend on its batchmates."""
    if seed is None:
        return None
    return int.from_bytes(hashlib.sha1(f"{seed}:{line}:{attempt}".encode()).digest()[:8], "big") >> 1


def form_budget(spec: FormSpec, params: SamplingParams) -> int:
    return max(params.max_new_tokens, FORM_TOKENS_PER_LINE * (spec.lines or 0))


class BatchRow:
    """One prompt of a batch: its settings, its form (a ``LineState``, None for plain decoding), its answer."""

    def __init__(self, prompt: list[int], params: SamplingParams, spec: FormSpec | None, budget: int,
                 stop_ids: list[int], topic: list[str] | tuple[str, ...] = ()):
        self.prompt, self.params, self.spec, self.budget = prompt, params, spec, budget
        self.form = LineState(spec, params.retries, stop_ids, budget, topic=list(topic)) \
            if spec is not None else None
        self.tokens: list[int] = []          # plain rows: the answer so far
        self.done = False
        self.finish = "length"
        self.first_token: float | None = None
        self.pos = len(prompt)               # the next token's position id
        self.line_start = (None, 0, None)    # form rows: (logits, position, seen) at the start of the line
        self.restart = False
        self.gen = make_generator(params.seed if self.form is None else try_seed(params.seed, 0, 0))

    def new_try(self) -> None:
        f = self.form
        self.gen = make_generator(try_seed(self.params.seed, f.index, len(f.tries)))


class _Context:
    """What the per-row step needs besides the row: the tokenizer's vocabulary facts, the mask, the stops."""

    def __init__(self, tokenizer, vocab: Vocabulary | None, stop_ids: set[int], mask: torch.Tensor,
                 seen: torch.Tensor):
        self.tokenizer, self.vocab, self.stop_ids, self.mask, self.seen = tokenizer, vocab, stop_ids, mask, seen
        self.accepted: list[tuple[int, str]] = []     # (row, line) accepted in this step

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def decode_batch(model, tokenizer, rows: list[BatchRow], *, pad_id: int, stop_ids: set[int], vocab_size: int,
                 vocab: Callable[[], Vocabulary], device, cancel: Callable[[], bool] = lambda: False,
                 slots: int | None = None) -> Iterator[tuple[int, str | None]]:
    """Decode every row to its end, ``slots`` rows at a time (all at once by default): when a row ends, the next
    waiting one is prefilled into its slot (continuous batching), so a long poem does not hold a batch of
    finished ones. Yields (row, line) as form rows accept lines and (row, None) as each row ends; returns
    the seconds taken (``StopIteration.value``). Results are left on the rows."""
    start = time.perf_counter()
    cache = decode_cache(model)
    # rows change hands only in a cache of plain full-attention layers; any other model decodes all at once
    n = min(slots or len(rows), len(rows)) if can_place(cache) else len(rows)
    width = max(len(r.prompt) for r in rows)          # every prompt fits before the first decode column
    waiting = deque(range(n, len(rows)))
    live = list(range(n))                             # the row each slot decodes
    cap = width + sum(r.budget * ((r.params.retries + 1) if r.form else 1) + 2 for r in rows)
    mask_buf = torch.zeros((n, width + 64), dtype=torch.long)   # on the CPU (rows edit single entries of it)
    seen = torch.zeros(n, vocab_size, dtype=torch.bool)
    ctx = _Context(tokenizer, vocab() if any(r.form for r in rows) else None, stop_ids, mask_buf, seen)
    penalty = torch.ones(n, 1)
    penalized = any(r.params.repetition_penalty != 1.0 for r in rows)
    col = width
    with torch.inference_mode(), oriented_linears(model):   # see decoding/matmul.py
        logits = torch.zeros(n, vocab_size)
        _join(model, cache, ctx, rows, live, list(range(n)), logits, penalty, width, pad_id, device, prefill=True)
        ended: set[int] = set()
        while True:
            free = [s for s in range(n) if rows[live[s]].done]
            if free and waiting:
                joining = free[:len(waiting)]
                for s in joining:
                    live[s] = waiting.popleft()
                _join(model, cache, ctx, rows, live, joining, logits, penalty, col, pad_id, device)
            if all(rows[i].done for i in live):
                break
            if not waiting and 4 * sum(rows[i].done for i in live) >= n:
                live, logits, penalty = _compact(cache, ctx, rows, live, logits, penalty, device)
                n, seen = len(live), ctx.seen
            feed = torch.full((n,), pad_id, dtype=torch.long)
            active = [s for s in range(n) if not rows[live[s]].done]
            for s in active:
                r = rows[live[s]]
                if r.restart:                       # a line starts again from its saved state
                    logits[s], r.pos, seen[s] = r.line_start
                    r.restart = False
            if penalized:   # only the seen entries (a few hundred a row), not five passes over [rows, vocab]
                at = seen.nonzero(as_tuple=True)
                vals, by = logits[at], penalty[at[0], 0]
                logits[at] = torch.where(vals > 0, vals / by, vals * by)
            for s in active:
                if rows[live[s]].form:
                    rows[live[s]].form.shape(logits[s], ctx.vocab)
            picks = sample_rows(logits, [rows[i].params for i in live], [rows[i].gen for i in live], active)
            for s in active:
                r = rows[live[s]]
                if r.first_token is None:
                    r.first_token = time.perf_counter() - start
                token = _advance(r, s, picks[s], col, ctx)
                if token is not None:
                    feed[s] = token
                    ctx.mask[s, col] = 1
                    if token not in ctx.stop_ids:        # never penalised (apply_repetition_penalty)
                        seen[s, token] = True
            for s, line in ctx.accepted:
                yield live[s], line
            ctx.accepted.clear()
            if cancel():
                waiting.clear()
                for r in rows:
                    if not r.done:
                        r.done, r.finish = True, "cancelled"
            for i in live:
                if rows[i].done and i not in ended:
                    ended.add(i)
                    yield i, None
            if all(rows[i].done for i in live) and not waiting:
                break
            if col + 1 >= cap:                      # a safety net: every row ends by its own budget first
                break
            if col + 1 >= ctx.mask.shape[1]:
                ctx.mask = torch.cat([ctx.mask, torch.zeros_like(ctx.mask)], 1)
            fed = ctx.mask[:, col].clone()
            pos = torch.tensor([[rows[i].pos] for i in live], dtype=torch.long)
            for s, i in enumerate(live):
                rows[i].pos += int(fed[s])
            col += 1
            out = model(input_ids=feed[:, None].to(device), attention_mask=ctx.mask[:, :col].to(device),
                        position_ids=pos.to(device), cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1].float().cpu()
            for s, i in enumerate(live):
                r = rows[i]
                if r.form and fed[s] and not r.form.ids and not r.done:   # a line break was fed: a line starts
                    r.line_start = (logits[s].clone(), r.pos, seen[s].clone())
        for i, r in enumerate(rows):
            r.done = True
            if i not in ended:
                yield i, None
    return time.perf_counter() - start


def _compact(cache, ctx: _Context, rows: list[BatchRow], live: list[int], logits: torch.Tensor,
             penalty: torch.Tensor, device) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Drop the slots whose rows have ended from the cache and every per-slot tensor; returns the new
    (live, logits, penalty). Each row's own mask, positions and seen tokens move with it, so nothing it
    samples changes (up to float rounding in a narrower matmul)."""
    keep = [s for s, i in enumerate(live) if not rows[i].done]
    index = torch.tensor(keep, dtype=torch.long)
    cache.batch_select_indices(index.to(device))
    ctx.mask, ctx.seen = ctx.mask[index], ctx.seen[index]
    return [live[s] for s in keep], logits[index], penalty[index]


def _join(model, cache, ctx: _Context, rows: list[BatchRow], live: list[int], joining: list[int],
          logits: torch.Tensor, penalty: torch.Tensor, end: int, pad_id: int, device, prefill: bool = False) -> None:
    """Prefill the prompts of the rows that slots ``joining`` now decode, ending at cache column ``end``:
    left-padded to their longest, positions counted from each row's first real token; the slot's mask
    hides whatever it held before. ``prefill``: the batch's first forward, written straight into ``cache``
    (with a prefix most rows share computed once, see ``decoding/prefill.py``)."""
    prompts = [rows[live[s]].prompt for s in joining]
    shared = prefill_shared(model, cache, prompts, end, pad_id, device) if prefill else None
    if shared is not None:
        new_logits, mask = shared
    else:
        w = end if prefill else max(len(p) for p in prompts)   # the first batch: padded to the longest of all rows
        ids = torch.full((len(joining), w), pad_id, dtype=torch.long)
        mask = torch.zeros((len(joining), w), dtype=torch.long)
        for j, p in enumerate(prompts):
            ids[j, w - len(p):] = torch.tensor(p)
            mask[j, w - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        target = cache if prefill else decode_cache(model)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                    cache=target, use_cache=True, logits_to_keep=1)
        if not prefill:
            place(cache, joining, target, end)
        new_logits = out.logits[:, -1].float().cpu()
    w = mask.shape[1]
    for j, s in enumerate(joining):
        r = rows[live[s]]
        ctx.mask[s, :end] = 0
        ctx.mask[s, end - w:end] = mask[j]
        ctx.seen[s] = False                  # the penalty counts the answer's tokens, not the prompt's
        logits[s] = new_logits[j]
        penalty[s, 0] = r.params.repetition_penalty
        r.pos = len(r.prompt)
        if r.form:
            r.line_start = (logits[s].clone(), r.pos, ctx.seen[s].clone())


def _advance(r: BatchRow, i: int, t: int, col: int, ctx: _Context) -> int | None:
    """Apply row ``r``'s sampled token ``t``; returns the token to feed at column ``col`` (None: nothing)."""
    if r.form is None:
        if t in ctx.stop_ids:
            r.done, r.finish = True, "stop"
            return None
        r.tokens.append(t)
        if len(r.tokens) >= r.budget:
            r.done = True
            return None
        return t
    f = r.form
    if t not in ctx.stop_ids and t not in ctx.vocab.newline_set:
        f.ids.append(t)
        f.text = ctx.decode(f.ids)
        if not (f.too_long() or len(f.output) + len(f.ids) >= r.budget):
            f.cols.append(col)
            return t
        f.ids.pop()                                  # the try is over, judged as it stands (t is never fed)
        f.text = ctx.decode(f.ids)
        t = ctx.vocab.newline[0]
    action, kept, tries = f.end_line(t)
    if action == "retry":
        for c in kept.cols:                          # the rejected try leaves the row's attention
            ctx.mask[i, c] = 0
        r.restart = True
        r.new_try()
        return None
    for tr in tries:                                 # only the kept try stays visible (maybe an earlier one)
        for c in tr.cols:
            ctx.mask[i, c] = int(tr is kept)
    seen_row = r.line_start[2].clone()
    seen_row[[x for x in kept.ids if x < seen_row.shape[0]]] = True
    ctx.seen[i] = seen_row
    r.pos = r.line_start[1] + len(kept.ids)
    ctx.accepted.append((i, kept.text.strip()))
    if action == "finish" or len(f.output) >= r.budget:
        r.done, r.finish = True, "stop" if action == "finish" else "length"
        if f.output and f.output[-1] in ctx.stop_ids:
            f.output.pop()
        return None
    r.new_try()
    return kept.end
