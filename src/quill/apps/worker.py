"""Running generations for the server: a bounded queue per model, one worker thread, async text streams.

Why this shape: a forward pass is seconds of blocking CPU work that would freeze uvicorn's event loop, and
two generations at once on one model would interleave its KV cache. So each request becomes a ``Job``
that runs in a worker thread and hands its text deltas back to the event loop through an
``asyncio.Queue``. All models share ONE worker thread by default: on a 2-core CPU two models decoding at
once just fight over the cores (each torch op already uses all of them), so serving them in turn is as fast
and keeps latency predictable. Each model admits at most ``max_queue`` waiting or running jobs; beyond that
``QueueFull`` becomes a 429. A ``threading.Event`` per job is the engine's cancel hook: the HTTP layer sets
it when the client goes away, and the engine stops at the next token (or never starts a queued job).
"""
from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

from quill.decoding.engine import Engine
from quill.decoding.results import GenerationResult
from quill.decoding.sampling import SamplingParams

_DONE = object()


class QueueFull(Exception):
    """The model already has ``max_queue`` jobs waiting or running."""


class Job:
    """One generation: ``async for delta in job`` streams the text; ``job.result`` is set at the end."""

    def __init__(self, worker: "ModelWorker", prompt_ids: list[int], params: SamplingParams,
                 prompt_text: str | None = None):
        self.worker, self.params = worker, params
        self.cancel = threading.Event()
        self.result: GenerationResult | None = None
        self._prompt_tokens = len(prompt_ids)
        # PromptTooLong raised here; prompt_text: the request's words (``form: auto`` reads them)
        self.stream = worker.engine.stream(prompt_ids, params, cancel=self.cancel, prompt_text=prompt_text)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._future = self._loop.run_in_executor(worker.executor, self._work)
        self._future.add_done_callback(lambda f: f.exception())  # errors are delivered through the queue

    def _put(self, item: Any) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _work(self) -> None:
        try:
            if not self.cancel.is_set():  # a client that left (or timed out) while queued costs nothing
                for delta in self.stream:
                    self._put(delta)
                self.result = self.stream.result
            else:   # still answered in full shape: an empty, cancelled result
                self.result = GenerationResult("", [], self._prompt_tokens, "cancelled")
            self._put(_DONE)
        except BaseException as err:  # noqa: BLE001 - re-raised in the event loop by __anext__
            self._put(err)
        finally:
            self.worker._finished(self)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        try:
            while True:
                item = await self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if self.result is None:  # the consumer stopped early (client gone, task cancelled)
                self.cancel.set()

    async def text(self) -> str:
        return "".join([d async for d in self])


class ModelWorker:
    """An engine behind a bounded queue. ``history`` keeps the last results (finish reason and token
    counts), which the tests read to check that a disconnected client really stopped its generation."""

    def __init__(self, engine: Engine, executor: ThreadPoolExecutor, max_queue: int = 32):
        self.engine, self.executor, self.max_queue = engine, executor, max_queue
        self._pending = 0
        self._lock = threading.Lock()
        self.history: collections.deque = collections.deque(maxlen=100)

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, prompt_ids: list[int], params: SamplingParams, prompt_text: str | None = None) -> Job:
        """Queue a generation (call from the event loop). Raises QueueFull or PromptTooLong at once."""
        with self._lock:
            if self._pending >= self.max_queue:
                raise QueueFull(f"{self.engine.name} has {self._pending} requests waiting; try again shortly")
            self._pending += 1
        try:
            return Job(self, prompt_ids, params, prompt_text)
        except BaseException:
            with self._lock:
                self._pending -= 1
            raise

    def _finished(self, job: Job) -> None:
        with self._lock:
            self._pending -= 1
        r = job.result or job.stream.result
        self.history.append({"finish_reason": r.finish_reason if r else "cancelled",
                             "completion_tokens": r.completion_tokens if r else 0,
                             "max_new_tokens": job.params.max_new_tokens})


def make_workers(engines: dict[str, Engine], max_queue: int = 32) -> dict[str, ModelWorker]:
    """One worker per name; names that share an Engine object (the same run served twice for the arena)
    share its worker too, so the model is loaded and queued once."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quill-generate")
    by_engine: dict[int, ModelWorker] = {}
    workers = {}
    for name, engine in engines.items():
        if id(engine) not in by_engine:
            by_engine[id(engine)] = ModelWorker(engine, executor, max_queue)
        workers[name] = by_engine[id(engine)]
    return workers
