"""Sampling for the eval suite: every (prompt, seed) of a model as one list of requests, decoded in batches.

Eval records, per sample, whether generation ended with the end-of-turn / EOS token or ran into
``max_new_tokens`` (the stopping metric), and is reproducible: each request carries its own seed (see
``quill.evaluate.run.sample_suite``: seed = base + 1000 * prompt index + j) and the engine gives each row
of a batch its own generator, so a sample does not depend on which others share its batch. The serving
engine (``quill.decoding.engine.Engine.generate_batch``) formats prompts as chat and serve do (chat through
the checkpoint's template, raw as plain text as DAPT saw poems); a request with ``form=True`` is decoded
form-aware (``SamplingParams(form="auto")``: the shape is read from the prompt's own words).

``sample_requests`` is the default sampler; ``run_eval(sampler=...)`` swaps in any callable with its
signature (tests use fakes that never load a model).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from quill.config import EvalConfig
from quill.data.template import encode_text
from quill.decoding.engine import Engine
from quill.decoding.sampling import SamplingParams
from quill.verse.forms import FormError, form_spec

DEFAULT_BATCH_SIZE = EvalConfig.model_fields["batch_size"].default

Progress = Callable[[int, int], None]     # (poems done in this call, tokens they generated)


@dataclass
class Sample:
    text: str
    finished: bool          # ended with a stop token before max_new_tokens
    new_tokens: int


@dataclass(frozen=True)
class Request:
    """One generation: a suite prompt, how it is sent (``chat`` / ``raw``), its seed, form-aware or plain."""
    prompt: str
    mode: str = "chat"
    seed: int = 0
    form: bool = False


def prompt_ids(tokenizer, template, prompt: str, mode: str) -> list[int]:
    """Token ids of a suite prompt: ``chat`` through the template, ``raw`` as plain text (as DAPT saw poems)."""
    if mode == "chat":
        return list(template.encode_prompt(tokenizer, [{"role": "user", "content": prompt}]))
    return encode_text(tokenizer, prompt)


def request_params(req: Request, settings: dict) -> SamplingParams:
    """The request's sampling settings: the run's (``settings``, no seed) with its seed and form."""
    return SamplingParams.from_settings(settings, seed=req.seed, form="auto" if req.form else None)


def expected_lines(req: Request) -> int:
    """Lines a form-aware request will be held to (0 for plain ones and prompts naming no shape): form rows
    get a token budget per line, so the long ones (sonnets) are batched together, not with haiku."""
    if not req.form:
        return 0
    try:
        spec = form_spec("auto", prompt=req.prompt)
    except FormError:
        return 0
    return (spec.lines or 0) if spec else 0


def sample_requests(model, tokenizer, template, requests: list[Request], batch_size: int = DEFAULT_BATCH_SIZE,
                    progress: Progress | None = None, **settings) -> list[Sample]:
    """One sample per request, in request order, decoded ``batch_size`` rows at a time with continuous
    batching (a finished row's slot takes the next request at once).

    Rows start in order of the length they are expected to run, longest first (form rows: the lines asked
    for, so sonnets do not trail at the end with the batch nearly empty), then of prompt length."""
    if not requests:
        return []
    engine = Engine(model, tokenizer, template, name="eval", fast=False)
    ids = [prompt_ids(tokenizer, template, r.prompt, r.mode) for r in requests]
    lines = [expected_lines(r) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: (-lines[i], -len(ids[i])))
    results = engine.generate_batch([ids[i] for i in order], [request_params(requests[i], settings) for i in order],
                                    prompt_texts=[requests[i].prompt for i in order], slots=batch_size,
                                    progress=None if progress is None else (lambda tokens: progress(1, tokens)))
    out: list[Sample | None] = [None] * len(requests)
    for i, r in zip(order, results):
        out[i] = Sample(text=r.text.strip("\n"), finished=r.finish_reason == "stop", new_tokens=len(r.token_ids))
    return [s for s in out if s is not None]


class Rate:
    """poems/s and tokens/s for a progress bar's postfix."""

    def __init__(self):
        self.t0, self.poems, self.tokens = time.perf_counter(), 0, 0

    def add(self, poems: int, tokens: int) -> dict:
        self.poems += poems
        self.tokens += tokens
        dt = max(time.perf_counter() - self.t0, 1e-9)
        return {"poems_s": f"{self.poems / dt:.2f}", "tok_s": f"{self.tokens / dt:,.0f}"}
