"""From generated token ids to streamed text: whole characters only, cut before a stop string.

Two jobs of the engine's loop that are about text, not tokens: a byte-level BPE token can end in the
middle of a multi-byte character (``Detokenizer`` holds it back until the character is whole), and an
OpenAI ``stop`` string can span several tokens (``StopText`` holds back the few characters that could
still begin one).
"""
from __future__ import annotations


class Detokenizer:
    """Incremental detokenisation: each new token yields the text it adds, decoded in the context of the
    previous few tokens (so merged tokens and leading spaces come out right) and held back while the tail
    is an incomplete UTF-8 sequence (U+FFFD), the approach of HF's TextStreamer and vLLM."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # decode window start
        self.read = 0  # tokens already turned into emitted text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) <= len(before) or now.endswith("\ufffd") or not now.startswith(before):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before):]

    def flush(self) -> str:
        """Whatever was held back (a genuinely broken byte sequence at the very end comes out as U+FFFD)."""
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):] if now.startswith(before) else ""


class StopText:
    """The answer's text as it streams, cut before the first of the ``stop`` strings (OpenAI's ``stop``):
    the last ``len(longest stop) - 1`` characters are held back until they cannot begin a stop string."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.hold = stops, max((len(s) for s in stops), default=1) - 1
        self.text, self.sent, self.stopped = "", 0, False

    def push(self, delta: str) -> str:
        if not delta or self.stopped:
            return ""
        self.text += delta
        if self.stops:
            start = max(0, self.sent - self.hold)
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                self.text, self.stopped = self.text[:min(hits)], True
                return self._emit(len(self.text))
        return self._emit(len(self.text) - self.hold)

    def flush(self) -> str:
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out, self.sent = self.text[self.sent:upto], upto
        return out
