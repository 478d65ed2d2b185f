"""What every endpoint shares: the loaded models' workers, the server's limits and the arena's store.

``Service.submit`` is the one place a request becomes a generation: the limits are checked there (prompt
length, ``max_tokens``), the settings validated (a bad one is a 400 naming it) and the job queued (a full
queue is a 429). ``collect`` and ``timed`` apply the generation time limit and cancel a job whose client
went away, so a vanished client stops holding the model.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import Request

from quill.apps.api_errors import ApiError
from quill.data.arena import ArenaStore
from quill.apps.limits import ServeLimits
from quill.apps.worker import ModelWorker, QueueFull
from quill.decoding.engine import PromptTooLong
from quill.decoding.sampling import SamplingError


@dataclass
class Service:
    workers: dict[str, ModelWorker]
    limits: ServeLimits
    arena: ArenaStore | None = None

    def worker_for(self, name: str) -> ModelWorker:
        if name not in self.workers:
            raise ApiError(404, f"model {name!r} not found; available: {', '.join(self.workers)}", param="model",
                           code="model_not_found")
        return self.workers[name]

    def check_chars(self, n: int, param: str) -> None:
        """Checked before tokenizing: a huge prompt costs its tokenization even when it is refused after."""
        if n > self.limits.max_prompt_chars:
            raise ApiError(400, f"the prompt is {n} characters; this server allows {self.limits.max_prompt_chars}",
                           param=param, code="context_length_exceeded")

    def submit(self, worker: ModelWorker, prompt_ids: list[int], overrides: dict[str, Any],
               prompt_text: str | None = None):
        """Validate the settings (a bad one is a 400 naming it) and queue the job; ``prompt_text`` is the
        request's own words, which ``form: auto`` reads."""
        engine, limits = worker.engine, self.limits
        overrides = dict(overrides)
        if limits.max_prompt_tokens is not None and len(prompt_ids) > limits.max_prompt_tokens:
            raise ApiError(400, f"the prompt is {len(prompt_ids)} tokens; this server allows "
                           f"{limits.max_prompt_tokens}", param="messages", code="context_length_exceeded")
        if overrides.get("max_new_tokens") and overrides["max_new_tokens"] > limits.max_tokens:
            raise ApiError(400, f"max_tokens: must be <= {limits.max_tokens} (this server's limit)",
                           param="max_tokens", code="invalid_value")
        if overrides.get("max_new_tokens") and overrides["max_new_tokens"] > engine.context_length:
            raise ApiError(400, f"max_tokens: must be <= {engine.context_length} (the model's context)",
                           param="max_tokens", code="invalid_value")
        try:
            params = engine.params(**overrides)
            if overrides.get("seed") is None:  # as OpenAI: no seed, a different answer each time
                params = params.with_(seed=None)
            return worker.submit(prompt_ids, params, prompt_text=prompt_text)
        except SamplingError as err:
            raise ApiError(400, str(err), param=err.param, code="invalid_value") from None
        except PromptTooLong as err:
            raise ApiError(400, str(err), param="messages", code="context_length_exceeded") from None
        except QueueFull as err:
            raise ApiError(429, str(err), type_="rate_limit_error", code="queue_full") from None

    # ------------------------------------------------------------------ time limits and vanished clients
    async def collect(self, job, request: Request) -> str | None:
        """A non-streaming job's whole text. Past ``generation_timeout_s`` the job is stopped and its text so far
        is the answer; a client that went away cancels the job (None), so it stops holding the model."""
        task = asyncio.ensure_future(job.text())
        deadline = time.monotonic() + self.limits.generation_timeout_s
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.2)
                if done:
                    return task.result()
                if time.monotonic() > deadline:
                    job.cancel.set()  # the engine stops at the next token; what it made is the answer
                    return await task
                if await request.is_disconnected():
                    job.cancel.set()
                    await asyncio.wait({task}, timeout=5)
                    return None
        finally:
            if not task.done():
                task.cancel()

    async def timed(self, job) -> AsyncIterator[str]:
        """A streaming job's deltas, stopped past ``generation_timeout_s`` (the stream then ends normally)."""
        deadline = time.monotonic() + self.limits.generation_timeout_s
        async for delta in job:
            yield delta
            if time.monotonic() > deadline:
                job.cancel.set()
