"""The generation engine: prefill, then token-by-token decode over the KV cache, with streaming text.

Why not ``model.generate``: serving needs things it does not give cheaply — text deltas as tokens arrive
(without breaking a multi-byte character split over two tokens), a cancel check per token so a client
that hangs up stops its generation, the finish reason (EOS vs length) and counts, and less per-step
overhead (its logits-processor and stopping-criteria machinery costs as much as a small model's step).
The loop here is the whole story: one forward over the prompt, then one forward per new token with
``logits_to_keep=1`` so only the last position is projected to the vocabulary.

Speed knobs live in :mod:`quill.decoding.fast` (dtype choice, opt-in int8 weights, static cache +
``torch.compile`` for GPUs) and :mod:`quill.decoding.llamacpp` (the forward pass in llama.cpp, opt-in); the
engine falls back to the eager loop whenever a fast decoder cannot be built.
Per-token work outside the model is kept to a few passes over the vocabulary (see ``sampling``).

An engine is not thread-safe: one generation at a time (the server gives each model one worker).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import torch

from quill.data.template import encode_text
from quill.decoding.batch import BatchRow, decode_batch, form_budget
from quill.decoding.fast import inference_dtype, make_decoder, quantize_int8
from quill.decoding.lines import Vocabulary
from quill.decoding.llamacpp import check_backend, pick_decoder
from quill.decoding.results import Cancel, GenerationResult, GenerationStream, cancelled
from quill.decoding.sampling import SamplingParams, make_generator, sample_next
from quill.decoding.text import Detokenizer, StopText
from quill.errors import QuillError
from quill.models import load_for_inference
from quill.verse.score import checks_from_prompt, score_text


class PromptTooLong(QuillError, ValueError):
    """The prompt leaves no room for a single new token in the model's context window."""


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
        self.decoder = decoder if decoder is not None else make_decoder(model, self.context_length, fast)
        self._vocabulary: Vocabulary | None = None

    @classmethod
    def load(cls, spec: str, name: str | None = None, dtype: Any = "auto", fast: str | bool = "auto",
             quantize: str | None = None, backend: str | None = None) -> "Engine":
        """Load a run folder / checkpoint / preset through ``quill.models`` and wrap it.

        ``backend`` (or ``QUILL_GEN_BACKEND``): ``torch`` (default), ``llama.cpp`` (the forward pass in
        llama.cpp on a cached GGUF export; see ``quill.decoding.llamacpp``) or ``auto`` (llama.cpp when it is
        installed, the model is on the CPU and its architecture exports, else torch). ``quantize`` (or
        ``QUILL_GEN_QUANT``): for torch ``int8`` (int8 weights on CPU, ~1.4x faster, slightly lossy) or none;
        for llama.cpp the GGUF weight type, ``q8_0`` by default (``f32``/``none``, ``f16``, ``q8_0``/``int8``,
        ``q5_0``, ``q5_1``, ``q4_0``, ``q4_1``). A llama.cpp backend that cannot run falls back to torch
        with a warning naming why."""
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
               cancel: Cancel = None, prompt_text: str | None = None) -> GenerationStream:
        """Text deltas as they are decoded. Raises PromptTooLong at once (before any work).

        Settings that ask for a form (``form``, ``lines``, ``rhyme``, ``meter``; ``form: auto`` reads
        ``prompt_text``, the request's own words) decode line by line (``decoding/lines.py``) and stream
        each line once it is accepted; ``best_of`` > 1 samples that many and streams the best at once."""
        params = params or self.defaults
        budget = self._budget(len(prompt_ids), params)
        if params.form_spec(prompt_text) is not None or params.best_of > 1:
            return GenerationStream(self._stream_form(list(prompt_ids), params, prompt_text, cancel))
        return GenerationStream(self._run(list(prompt_ids), params, budget, cancel))

    def generate(self, prompt_ids: list[int], params: SamplingParams | None = None,
                 cancel: Cancel = None, prompt_text: str | None = None) -> GenerationResult:
        return self.stream(prompt_ids, params, cancel, prompt_text).consume()

    def _run(self, prompt_ids: list[int], params: SamplingParams, budget: int, cancel: Cancel):
        start = time.perf_counter()
        detok = Detokenizer(self.tokenizer)
        result = GenerationResult("", [], len(prompt_ids))
        gen = make_generator(params.seed)
        penalize = params.repetition_penalty != 1.0
        # the penalty counts the answer's own tokens, not the prompt's (sampling.apply_repetition_penalty);
        # a sampled stop token ends the answer below, so it is never counted either
        seen_ids: set[int] = set()
        seen = torch.tensor([], dtype=torch.long, device=self.device) if penalize else None
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
                    seen = torch.tensor(sorted(seen_ids), dtype=torch.long, device=self.device)
                delta = text.push(detok.push(token))
                if delta:
                    yield delta
                if text.stopped:
                    result.finish_reason = "stop"
                    break
                if len(result.token_ids) >= budget:
                    break
                if cancelled(cancel):
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

    # ------------------------------------------------------------------ batches, forms, best-of
    def vocabulary(self) -> Vocabulary:
        """Token facts for form-aware decoding (line breaks, word tokens), computed on first use."""
        if self._vocabulary is None:
            self._vocabulary = Vocabulary(self.tokenizer, self.vocab)
        return self._vocabulary

    def _rows(self, prompts: list[list[int]], params: list[SamplingParams],
              prompt_texts: list[str | None]) -> list[BatchRow]:
        rows = []
        for ids, p, text in zip(prompts, params, prompt_texts):
            spec = p.form_spec(text)
            want = form_budget(spec, p) if spec is not None else p.max_new_tokens
            budget = self._budget(len(ids), p.with_(max_new_tokens=want))
            topic = checks_from_prompt(text).get("topic", []) if spec is not None and text else []
            rows.append(BatchRow(list(ids), p, spec, budget, sorted(self.stop_ids), topic))
        return rows

    def _decode(self, rows: list[BatchRow], cancel: Cancel = None, slots: int | None = None,
                progress: Callable[[int], None] | None = None):
        """Run ``decode_batch`` over the rows; yields (row, line) for accepted form lines (and (row, None) as a
        row ends, after calling ``progress`` with its new-token count); returns the results."""
        events = decode_batch(self.model, self.tokenizer, rows, pad_id=self.pad_id, stop_ids=self.stop_ids,
                              vocab_size=self.vocab, vocab=self.vocabulary, device=self.device,
                              cancel=lambda: cancelled(cancel), slots=slots)
        while True:
            try:
                row, line = next(events)
            except StopIteration as stop:
                seconds = stop.value
                break
            if line is None and progress is not None:
                r = rows[row]
                progress(len(r.form.output if r.form is not None else r.tokens))
            yield row, line
        results = []
        for r in rows:
            ids = r.form.output if r.form is not None else r.tokens
            res = GenerationResult(self._text(ids, r.form is not None), list(ids), len(r.prompt), r.finish,
                                   r.first_token, seconds)
            res.lines_resampled = r.form.resampled if r.form is not None else 0
            res.form = r.spec.describe() if r.spec is not None else None
            results.append(res)
        return results

    def _text(self, ids: list[int], by_line: bool) -> str:
        """The answer's text; a form answer's lines without the spaces a tokenizer puts before a word."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return "\n".join(ln.strip() for ln in text.split("\n")).strip("\n") if by_line else text

    def generate_batch(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                       cancel: Cancel = None, prompt_texts: list[str | None] | None = None,
                       slots: int | None = None, progress: Callable[[int], None] | None = None
                       ) -> list[GenerationResult]:
        """Several prompts at once (see ``decoding/batch.py``): one ``SamplingParams`` for all rows or one per
        row (each row samples from its own seed, so its poem does not depend on its batchmates; greedy rows
        match ``generate``). Rows whose settings ask for a form (``form: auto`` reads ``prompt_texts``)
        decode line by line. ``params.stop`` strings are for ``stream``/``generate``; here the template's
        stop tokens end a row. ``best_of`` is not applied here (see ``best_of``). ``slots``: decode at most that
        many rows at once, a finished row's slot going to the next prompt (continuous batching); ``progress``
        is called with each row's new-token count as it ends."""
        if not prompts:
            return []
        if not isinstance(params, list):
            params = [params or self.defaults] * len(prompts)
        rows = self._rows(prompts, params, prompt_texts or [None] * len(prompts))
        gen = self._decode(rows, cancel, slots, progress)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def _stream_form(self, prompt_ids: list[int], params: SamplingParams, prompt_text: str | None, cancel: Cancel):
        """One form-aware answer, streamed a line at a time (a line is shown once it is accepted)."""
        if params.best_of > 1:
            best = self.best_of([prompt_ids], params, [prompt_text], cancel)[0]
            if best.text:
                yield best.text
            return best
        rows = self._rows([prompt_ids], [params], [prompt_text])
        text, shown = StopText(params.stop), ""
        gen = self._decode(rows, cancel)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                result = stop.value[0]
                break
            now = self._text(rows[0].form.output, True)   # the accepted lines so far, as the result will read
            delta = text.push(now[len(shown):])
            shown = now
            if delta:
                yield delta
            if text.stopped:
                gen.close()
                result = GenerationResult("", list(rows[0].form.output), len(prompt_ids), "stop")
                break
        tail = text.push(result.text[len(shown):]) + text.flush() if not text.stopped else text.flush()
        if tail:
            yield tail
        result.text = text.text
        return result

    def best_of(self, prompts: list[list[int]], params: SamplingParams, prompt_texts: list[str | None],
                cancel: Cancel = None) -> list[GenerationResult]:
        """``params.best_of`` samples per prompt (seeds seed, seed+1, ...), the best of each by the poetic score
        (``quill.verse.score``) of its text against the checks its prompt asks for."""
        k = params.best_of
        seeds = [None if params.seed is None else params.seed + j for j in range(k)]
        rows = [params.with_(seed=s, best_of=1) for _ in prompts for s in seeds]
        results = self.generate_batch([p for p in prompts for _ in seeds], rows, cancel,
                                      [t for t in prompt_texts for _ in seeds])
        out = []
        for i, text in enumerate(prompt_texts):
            group = results[i * k:(i + 1) * k]
            checks = checks_from_prompt(text or "")
            scores = [score_text(r.text, checks, r.finish_reason == "stop") for r in group]
            best = group[max(range(k), key=lambda j: scores[j])]
            best.score = max(scores)
            out.append(best)
        return out
