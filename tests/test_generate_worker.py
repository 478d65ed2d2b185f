"""The worker behind the server: a job cancelled while it waits in the queue still ends with a result."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from quill.apps.worker import ModelWorker
from tests_support import run_async


class _Engine:
    """Counts the generations it is asked to run; each one waits for ``gate`` (so a second job queues)."""
    name = "fake"

    def __init__(self):
        self.gate, self.runs = threading.Event(), 0

    def stream(self, prompt_ids, params, cancel=None, prompt_text=None):
        from quill.decoding.results import GenerationResult, GenerationStream

        def gen():
            self.runs += 1
            self.gate.wait(5)
            yield "a poem"
            return GenerationResult("a poem", [1, 2], len(prompt_ids), "stop")
        return GenerationStream(gen())


def test_a_job_cancelled_while_queued_ends_with_a_cancelled_result():
    async def main():
        engine = _Engine()
        worker = ModelWorker(engine, ThreadPoolExecutor(max_workers=1))
        first = worker.submit([1, 2, 3], None)
        second = worker.submit([4, 5], None)      # queued behind the first (one thread)
        second.cancel.set()                       # the client gives up (or its time limit passes) while queued
        engine.gate.set()
        assert await first.text() == "a poem" and first.result.finish_reason == "stop"
        assert await second.text() == ""
        assert second.result is not None and second.result.finish_reason == "cancelled"
        assert second.result.prompt_tokens == 2 and engine.runs == 1
    run_async(main, timeout=30)   # not asyncio.run: the browser test may leave a loop running
