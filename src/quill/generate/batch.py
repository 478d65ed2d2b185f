"""Batched decoding: many prompts at once, each row with its own sampling settings, seed and (optionally) form.

Rows are left-padded so every row's next token sits at the same cache column; position ids count each
row's own tokens, so a row decodes as it would alone (up to float rounding; greedy rows match batch 1).
Each row draws from its own generator (seeded by its ``seed``, and for form rows by the line and try),
so a row's poem does not depend on which other rows share its batch.

Form rows (``generate/lines.py``) may reject a line and start it again: their rejected tokens stay in the
cache, masked out of attention for that row, and the row's positions continue from the line's start.
While a row restarts a line it feeds nothing (a masked pad column) and samples from the logits it saved at
the start of that line. ``decode_batch`` yields (row, text) each time a form row accepts a line, so a
single streamed row shows its lines as they are accepted (held back while they may be resampled).
"""
from __future__ import annotations

import hashlib
import time
from typing import Callable, Iterator

import torch

from quill.generate.lines import LineState, Vocabulary
from quill.generate.sampling import SamplingParams, make_generator, sample_rows
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
                 vocab: Callable[[], Vocabulary], device, cancel: Callable[[], bool] = lambda: False
                 ) -> Iterator[tuple[int, str]]:
    """Decode every row to its end, yielding (row, line) as form rows accept lines; returns the seconds
    taken (``StopIteration.value``). Results are left on the rows."""
    start = time.perf_counter()
    n, width = len(rows), max(len(r.prompt) for r in rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
        mask[i, width - len(r.prompt):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # the mask lives on the CPU (rows edit single entries of it); a copy goes to the device for each step
    mask_buf = torch.zeros((n, width + max(r.budget * (r.params.retries + 1 if r.form else 1) for r in rows) + 1),
                           dtype=torch.long)
    mask_buf[:, :width] = mask
    seen = torch.zeros(n, vocab_size, dtype=torch.bool)
    seen.scatter_(1, ids.clamp(max=vocab_size - 1), mask.bool())
    ctx = _Context(tokenizer, vocab() if any(r.form for r in rows) else None, stop_ids, mask_buf, seen)
    col = width
    penalty = torch.tensor([[r.params.repetition_penalty] for r in rows])
    penalized = bool((penalty != 1.0).any())
    from transformers import DynamicCache
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                    cache=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float().cpu()
        for i, r in enumerate(rows):
            if r.form:
                r.line_start = (logits[i].clone(), r.pos, seen[i].clone())
        while col < mask_buf.shape[1] - 1 and not all(r.done for r in rows):
            feed = torch.full((n,), pad_id, dtype=torch.long)
            active = [i for i, r in enumerate(rows) if not r.done]
            for i in active:
                r = rows[i]
                if r.restart:                       # a line starts again from its saved state
                    logits[i], r.pos, seen[i] = r.line_start
                    r.restart = False
            if penalized:
                logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
            for i in active:
                if rows[i].form:
                    rows[i].form.shape(logits[i], ctx.vocab)
            picks = sample_rows(logits, [r.params for r in rows], [r.gen for r in rows], active)
            for i in active:
                r = rows[i]
                if r.first_token is None:
                    r.first_token = time.perf_counter() - start
                token = _advance(r, i, picks[i], col, ctx)
                if token is not None:
                    feed[i] = token
                    mask_buf[i, col] = 1
                    seen[i, token] = True
            yield from ctx.accepted
            ctx.accepted.clear()
            if cancel():
                for r in rows:
                    if not r.done:
                        r.done, r.finish = True, "cancelled"
            if all(r.done for r in rows):
                break
            fed = mask_buf[:, col].clone()
            pos = torch.tensor([[r.pos] for r in rows], dtype=torch.long)
            for i, r in enumerate(rows):
                r.pos += int(fed[i])
            col += 1
            out = model(input_ids=feed[:, None].to(device), attention_mask=mask_buf[:, :col].to(device),
                        position_ids=pos.to(device), cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1].float().cpu()
            for i, r in enumerate(rows):
                if r.form and fed[i] and not r.form.ids and not r.done:   # a line break was fed: a line starts
                    r.line_start = (logits[i].clone(), r.pos, seen[i].clone())
        for r in rows:
            r.done = True
    return time.perf_counter() - start


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
