"""The OpenAI-compatible endpoints: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Why OpenAI's wire format, byte for byte: every client, notebook and UI already speaks it, so the official
``openai`` package works unchanged against a poet on localhost. Streaming is plain server-sent events
(``data: {json}\\n\\n`` … ``data: [DONE]``) written by a ``StreamingResponse``, which cancels the stream when
the client disconnects; the job's cancel event then stops the model at the next token.
"""
from __future__ import annotations

import json
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from quill.apps import openai_schema as oa
from quill.apps.api_errors import ApiError, error_response
from quill.apps.service import Service


def openai_router(service: Service) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "quill",
                                            "context_length": w.engine.context_length}
                                           for n, w in service.workers.items()]}

    @router.post("/v1/chat/completions")
    async def chat_completions(req: oa.ChatRequest, request: Request):
        worker = service.worker_for(req.model)
        messages = [m.as_quill() for m in req.messages]
        service.check_chars(sum(len(m["content"]) for m in messages), "messages")
        try:
            prompt_ids = worker.engine.chat_prompt(messages)
        except ValueError as err:
            raise ApiError(400, str(err), param="messages") from None
        asked = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
        return await answer(service.submit(worker, prompt_ids, req.sampling(), asked), req, request, chat=True)

    @router.post("/v1/completions")
    async def completions(req: oa.CompletionRequest, request: Request):
        worker = service.worker_for(req.model)
        service.check_chars(len(req.text), "prompt")
        job = service.submit(worker, worker.engine.text_prompt(req.text), req.sampling(), req.text)
        return await answer(job, req, request, chat=False)

    async def answer(job, req, request: Request, chat: bool):
        """A job's answer in OpenAI's shape: one response, or SSE chunks (chat: deltas after a role chunk;
        completions: text), then the finish reason, the usage if asked for, and [DONE]."""
        cid, created = oa.new_id("chatcmpl" if chat else "cmpl"), oa.now()
        empty = {} if chat else ""

        def chunk(delta, finish=None) -> dict:
            return (oa.chat_chunk if chat else oa.completion_chunk)(cid, req.model, created, delta, finish)

        if not req.stream:
            text = await service.collect(job, request)
            if text is None:
                return error_response(499, "client closed the request", code="client_closed")
            r = job.result
            respond = oa.chat_response if chat else oa.completion_response
            return respond(cid, req.model, created, text, _finish(r), r.prompt_tokens, r.completion_tokens)

        async def events() -> AsyncIterator[str]:
            if chat:
                yield _sse(chunk({"role": "assistant", "content": ""}))
            async for delta in service.timed(job):
                yield _sse(chunk({"content": delta} if chat else delta))
            r = job.result
            yield _sse(chunk(empty, _finish(r)))
            if req.include_usage:
                yield _sse({**chunk(empty), "choices": [], "usage": oa.usage(r.prompt_tokens, r.completion_tokens)})
            yield "data: [DONE]\n\n"
        return _stream(events())

    return router


def _finish(result) -> str:
    """OpenAI's finish reasons: a generation stopped by the time limit ends like one cut by max_tokens."""
    return "length" if result.finish_reason == "cancelled" else result.finish_reason


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
