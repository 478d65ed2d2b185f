"""The server's limits: what one request may ask for, and how long it may take. Each has a sane default and is
set with ``create_app(limits=ServeLimits(...))`` / ``run_server(limits=...)``; beyond a limit the answer is a 4xx
in OpenAI's error shape, never a slow death of the server.

Why each one:
- ``max_body_bytes`` (413): a 30 MB JSON body used to be read, parsed and *tokenized* (40 s of CPU) before the
  context check refused it; the body is now refused while it is being read, before any of that.
- ``body_timeout_s`` (408): a client that sends headers and then trickles (or never sends) its body must not keep
  a connection and a request slot forever.
- ``max_prompt_chars`` (400): a cheap bound checked before tokenizing; the token bound is the model's context
  (``PromptTooLong``, 400) or ``max_prompt_tokens`` when set lower.
- ``max_tokens`` (400): the most new tokens one request may ask for (the model's context bounds it too).
- ``max_concurrent`` (429): generations waiting or running per model (the worker's queue).
- ``generation_timeout_s``: a generation that runs longer is stopped and answered with what it has
  (``finish_reason: "length"``), so one request cannot hold the model for minutes.
- ``n`` is fixed at 1 by the request schema (400 otherwise): the engine makes one choice per request.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass


DRAIN_FACTOR = 16  # an oversized body is read and dropped up to 16 x the limit before the 413 (then: reset)


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 1_000_000
    body_timeout_s: float = 15.0
    max_prompt_chars: int = 32_000
    max_prompt_tokens: int | None = None      # None: the model's context window decides
    max_tokens: int = 1024
    max_concurrent: int = 32
    generation_timeout_s: float = 300.0


async def _send_error(send, status: int, message: str, code: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: read a request body at most ``max_bytes`` long within ``timeout_s``, then hand it to the
    app. Too long -> 413 (from Content-Length at once, or as soon as the bytes pass the limit); too slow -> 408.
    After the body, ``receive`` passes through, so the app still sees the client's disconnect."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = f"the request body is larger than {self.max_bytes} bytes"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _send_error(send, 400, "bad Content-Length header", "invalid_request")
            if declared > self.max_bytes:
                await self._drain(receive, deadline)
                return await _send_error(send, 413, limit, "request_too_large")
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                return await _send_error(send, 408, f"the request body did not arrive within {self.timeout_s:g} s",
                                         "request_timeout")
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await self._drain(receive, deadline)
                return await _send_error(send, 413, limit, "request_too_large")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)

    async def _drain(self, receive, deadline: float) -> None:
        """Read and drop what the client is still sending (at most ``DRAIN_FACTOR`` x the limit, within the
        body deadline), so it is reading when the 413 comes instead of seeing a reset connection."""
        loop = asyncio.get_running_loop()
        left = DRAIN_FACTOR * self.max_bytes
        while left > 0:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                return
            if message["type"] != "http.request":
                return
            left -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return
