"""The generation engine: prefill, then token-by-token decode over the KV cache, with streaming text.

Why not ``model.generate``: serving needs things it does not give cheaply — text deltas as tokens arrive
(without breaking a multi-byte character split over two tokens), a cancel check per token so a client
that hangs up stops its generation, the finish reason (EOS vs length) and counts, and less per-step
overhead (its logits-processor and stopping-criteria machinery costs as much as a small model's step).
The loop here is the whole story: one forward over the prompt, then one forward per new token with
``logits_to_keep=1`` so only the last position is projected to the vocabulary.

Speed knobs live in :mod:`quill.generate.fast` (dtype choice, opt-in int8 weights, static cache +
``torch.compile`` for GPUs) and :mod:`quill.generate.llamacpp` (the forward pass in llama.cpp, opt-in); the
engine falls back to the eager loop whenever a fast decoder cannot be built.
Per-token work outside the model is kept to a few passes over the vocabulary (see ``sampling``).

An engine is not thread-safe: one generation at a time (the server gives each model one worker).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from quill.data.template import encode_text
from quill.errors import QuillError
from quill.generate.sampling import SamplingParams, make_generator, sample_next
from quill.generate.text import Detokenizer, StopText

Cancel = Callable[[], bool] | threading.Event | None


class PromptTooLong(QuillError, ValueError):
    """The prompt leaves no room for a single new token in the model's context window."""


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str = "length"  # "stop": a stop token; "length": max_new_tokens / context; "cancelled"
    time_to_first_token: float | None = None
    seconds: float = 0.0

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first over the time after the first (prefill excluded)."""
        decode = self.seconds - (self.time_to_first_token or 0.0)
        return (self.completion_tokens - 1) / decode if self.completion_tokens > 1 and decode > 0 else 0.0


def _cancelled(cancel: Cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


class GenerationStream:
    """Iterate for text deltas; ``result`` is set once the iteration ends (or ``close()`` stops it)."""

    def __init__(self, gen: Iterator[str]):
        self._gen = gen
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self._gen)
        except StopIteration as stop:
            self.result = stop.value
            raise StopIteration from None

    def close(self) -> None:
        self._gen.close()

    def consume(self) -> GenerationResult:
        for _ in self:
            pass
        assert self.result is not None
        return self.result


class Engine:
    """Generates from one causal LM with the prompt template saved next to it."""

    def __init__(self, model, tokenizer, template, *, name: str = "model", context_length: int | None = None,
                 generation: dict[str, Any] | None = None, fast: str | bool = "auto", decoder: Any = None):
        self.model, self.tokenizer, self.template, self.name = model, tokenizer, template, name
        self.context_length = int(context_length or getattr(model.config, "max_position_embeddings", 2048))
        self.defaults = SamplingParams.from_settings(generation or {})
        self.stop_ids = set(template.stop_token_ids(tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.stop_ids)
        self.device = next(model.parameters()).device
        self.vocab = model.get_output_embeddings().weight.shape[0]
        from quill.generate.fast import make_decoder
        self.decoder = decoder if decoder is not None else make_decoder(model, self.context_length, fast)

    @classmethod
    def load(cls, spec: str, name: str | None = None, dtype: Any = "auto", fast: str | bool = "auto",
             quantize: str | None = None, backend: str | None = None) -> "Engine":
        """Load a run folder / checkpoint / preset through ``quill.models`` and wrap it.

        ``backend`` (or ``QUILL_GEN_BACKEND``): ``torch`` (default), ``llama.cpp`` (the forward pass in
        llama.cpp on a cached GGUF export; see ``quill.generate.llamacpp``) or ``auto`` (llama.cpp when it is
        installed, the model is on the CPU and its architecture exports, else torch). ``quantize`` (or
        ``QUILL_GEN_QUANT``): for torch ``int8`` (int8 weights on CPU, ~1.4x faster, slightly lossy) or none;
        for llama.cpp the GGUF weight type, ``q8_0`` by default (``f32``/``none``, ``f16``, ``q8_0``/``int8``,
        ``q5_0``, ``q5_1``, ``q4_0``, ``q4_1``). A llama.cpp backend that cannot run falls back to torch
        with a warning naming why."""
        import os
        from quill.generate.fast import inference_dtype, quantize_int8
        from quill.generate.llamacpp import check_backend, pick_decoder
        from quill.models import load_for_inference
        quantize = quantize or os.environ.get("QUILL_GEN_QUANT") or None
        backend = check_backend(backend or os.environ.get("QUILL_GEN_BACKEND") or "torch", quantize)
        s = load_for_inference(spec, dtype=inference_dtype(dtype))
        decoder, quantize = pick_decoder(s.model, s.tokenizer, s.context_length, backend, quantize, name or s.name)
        if decoder is None:
            if quantize not in (None, "none", "int8"):
                raise QuillError(f"quantize: unknown scheme {quantize!r} for the torch backend (use int8 or none)")
            if quantize == "int8":
                quantize_int8(s.model)
        return cls(s.model, s.tokenizer, s.template, name=name or s.name, context_length=s.context_length,
                   generation=s.generation, fast=fast, decoder=decoder)

    # ------------------------------------------------------------------ prompts
    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Ids of a conversation, formatted by the checkpoint's own template (never re-implemented here)."""
        return self.template.encode_prompt(self.tokenizer, messages)

    def text_prompt(self, text: str) -> list[int]:
        """Raw completion: the text as is, no chat formatting and no special tokens (as DAPT saw poems)."""
        return encode_text(self.tokenizer, text)

    def params(self, **overrides: Any) -> SamplingParams:
        """The run's sampling defaults with ``overrides`` (None values ignored), validated."""
        return SamplingParams.from_settings(self.defaults.to_dict(), **overrides)

    def count_tokens(self, text: str) -> int:
        return len(encode_text(self.tokenizer, text))

    def _budget(self, n_prompt: int, params: SamplingParams) -> int:
        room = self.context_length - n_prompt
        if n_prompt == 0:
            raise PromptTooLong("the prompt is empty")
        if room < 1:
            raise PromptTooLong(f"the prompt is {n_prompt} tokens; the context window of {self.name} is "
                                f"{self.context_length}")
        return min(params.max_new_tokens, room)

    # ------------------------------------------------------------------ batch 1, streamed
    def stream(self, prompt_ids: list[int], params: SamplingParams | None = None,
               cancel: Cancel = None) -> GenerationStream:
        """Text deltas as they are decoded. Raises PromptTooLong at once (before any work)."""
        params = params or self.defaults
        budget = self._budget(len(prompt_ids), params)
        return GenerationStream(self._run(list(prompt_ids), params, budget, cancel))

    def generate(self, prompt_ids: list[int], params: SamplingParams | None = None,
                 cancel: Cancel = None) -> GenerationResult:
        return self.stream(prompt_ids, params, cancel).consume()

    def _run(self, prompt_ids: list[int], params: SamplingParams, budget: int, cancel: Cancel):
        start = time.perf_counter()
        detok = Detokenizer(self.tokenizer)
        result = GenerationResult("", [], len(prompt_ids))
        gen = make_generator(params.seed)
        penalize = params.repetition_penalty != 1.0
        seen_ids = {t for t in prompt_ids if t < self.vocab}
        seen = torch.tensor(sorted(seen_ids), device=self.device) if penalize else None
        text = StopText(params.stop)
        with torch.inference_mode():
            logits = self.decoder.prefill(torch.tensor([prompt_ids], device=self.device), len(prompt_ids) + budget)
            while True:
                token = int(sample_next(logits, params, gen, seen)[0])
                if result.time_to_first_token is None:
                    result.time_to_first_token = time.perf_counter() - start
                if token in self.stop_ids:
                    result.finish_reason = "stop"
                    break
                result.token_ids.append(token)
                if penalize and token not in seen_ids:
                    seen_ids.add(token)
                    seen = torch.tensor(sorted(seen_ids), device=self.device)
                delta = text.push(detok.push(token))
                if delta:
                    yield delta
                if text.stopped:
                    result.finish_reason = "stop"
                    break
                if len(result.token_ids) >= budget:
                    break
                if _cancelled(cancel):
                    result.finish_reason = "cancelled"
                    break
                logits = self.decoder.step(token)
        if not text.stopped:
            tail = text.push(detok.flush()) + text.flush()
            if text.stopped:
                result.finish_reason = "stop"
            if tail:
                yield tail
        result.text = text.text
        result.seconds = time.perf_counter() - start
        return result

    # ------------------------------------------------------------------ batches (evaluation)
    def generate_batch(self, prompts: list[list[int]], params: SamplingParams | None = None,
                       cancel: Cancel = None) -> list[GenerationResult]:
        """Several prompts at once, left-padded (so every row's last token is at the same position, with
        position ids counted from each row's first real token); each row stops on its own stop token and
        then only pads until the slowest row is done. Rows draw from one seeded generator, so a sampled
        row differs from the same prompt generated alone; greedy rows match it. ``params.stop`` strings are
        for ``stream``/``generate`` (the server); here only the template's stop tokens end a row."""
        params = params or self.defaults
        if not prompts:
            return []
        budget = min(self._budget(len(p), params) for p in prompts)
        start = time.perf_counter()
        n, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        results = [GenerationResult("", [], len(p)) for p in prompts]
        done = torch.zeros(n, dtype=torch.bool)
        gen = make_generator(params.seed)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(n, self.vocab, dtype=torch.bool, device=self.device)
            seen.scatter_(1, ids.clamp(max=self.vocab - 1), mask.bool())
        from transformers import DynamicCache
        with torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                             use_cache=True, logits_to_keep=1)
            for step in range(budget):
                tokens = sample_next(out.logits[:, -1], params, gen, seen).cpu()
                for i in range(n):
                    if done[i]:
                        continue
                    t = int(tokens[i])
                    if results[i].time_to_first_token is None:
                        results[i].time_to_first_token = time.perf_counter() - start
                    if t in self.stop_ids:
                        results[i].finish_reason, done[i] = "stop", True
                    else:
                        results[i].token_ids.append(t)
                tokens = tokens.masked_fill(done, self.pad_id).to(self.device)
                if seen is not None:
                    seen[torch.arange(n), tokens] |= ~done.to(self.device)
                if bool(done.all()) or step == budget - 1 or _cancelled(cancel):
                    break
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=self.device)], dim=1)
                positions = positions[:, -1:] + 1
                out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions,
                                 cache=cache, use_cache=True, logits_to_keep=1)
        seconds = time.perf_counter() - start
        for r in results:
            r.text = self.tokenizer.decode(r.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            r.seconds = seconds
        return results
