"""What a generation returns: its result (text, tokens, why it ended, timings) and the stream of text deltas."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterator

Cancel = Callable[[], bool] | threading.Event | None


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str = "length"  # "stop": a stop token; "length": max_new_tokens / context; "cancelled"
    time_to_first_token: float | None = None
    seconds: float = 0.0
    form: str | None = None          # the form decoded to (FormSpec.describe()), None for plain decoding
    lines_resampled: int = 0         # form decoding: lines tried again
    score: float | None = None       # best-of: the kept sample's poetic score

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first over the time after the first (prefill excluded)."""
        decode = self.seconds - (self.time_to_first_token or 0.0)
        return (self.completion_tokens - 1) / decode if self.completion_tokens > 1 and decode > 0 else 0.0


def cancelled(cancel: Cancel) -> bool:
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


