"""``quill serve``: an OpenAI-compatible API, the web page (chat + blind A/B arena) and the arena's votes.

Why OpenAI's wire format, byte for byte: every client, notebook and UI already speaks it, so the official
``openai`` package works unchanged against a poet on localhost. Streaming is plain server-sent events
(``data: {json}\\n\\n`` … ``data: [DONE]``) written by a ``StreamingResponse``, which cancels the stream when
the client disconnects; the job's cancel event then stops the model at the next token.

Every error, including malformed JSON, validation failures and unexpected exceptions, is answered as
``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status and no traceback.

Limits (body size and read time, prompt length, ``max_tokens``, concurrent generations, generation time) are
in :mod:`quill.generate.limits`; a non-streaming client that goes away cancels its generation too.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from quill.generate import openai_schema as oa
from quill.generate.arena import ArenaStore
from quill.generate.engine import Engine, PromptTooLong
from quill.generate.limits import BodyLimit, ServeLimits
from quill.generate.sampling import SamplingError, SamplingParams
from quill.generate.worker import ModelWorker, QueueFull, make_workers

log = logging.getLogger("quill.serve")
WEB = Path(__file__).parent / "web"


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, oa.error_body(message, type_, param, code)


def _error(status: int, message: str, **kw: Any) -> JSONResponse:
    return JSONResponse(oa.error_body(message, **kw), status_code=status)


def create_app(engines: dict[str, Engine], arena_db: str | Path | None = None, api_key: str | None = None,
               max_queue: int | None = None, limits: ServeLimits | None = None) -> FastAPI:
    """The whole service for already-loaded engines (tests pass tiny ones; ``run_server`` loads runs).
    ``max_queue`` (kept for callers that set only that) overrides ``limits.max_concurrent``."""
    limits = limits or ServeLimits()
    app = FastAPI(title="quill", docs_url="/docs", redoc_url=None)
    app.state.limits = limits
    app.state.workers = workers = make_workers(engines, max_queue or limits.max_concurrent)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)
    app.state.arena = ArenaStore(arena_db) if arena_db else None

    # ------------------------------------------------------------------ errors and auth
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError):
        return JSONResponse(err.body, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON", code="invalid_json")
        msg = first.get("msg", "invalid request").removeprefix("Value error, ")
        param = ".".join(loc) or None
        return _error(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException):
        return _error(err.status_code, str(err.detail), type_="not_found" if err.status_code == 404 else "error")

    @app.exception_handler(Exception)
    async def _crash(_: Request, err: Exception):
        log.exception("internal error")
        return _error(500, "internal server error (see the server log)", type_="server_error")

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and (request.url.path.startswith("/v1/") or request.url.path.startswith("/arena/")):
            sent = request.headers.get("authorization", "")
            token = sent[7:] if sent.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return _error(401, "missing or wrong API key (Authorization: Bearer KEY)",
                              type_="authentication_error", code="invalid_api_key")
        return await call_next(request)

    def worker_for(name: str) -> ModelWorker:
        if name not in workers:
            raise ApiError(404, f"model {name!r} not found; available: {', '.join(workers)}", param="model",
                           code="model_not_found")
        return workers[name]

    def submit(worker: ModelWorker, prompt_ids: list[int], overrides: dict[str, Any], prompt_text: str | None = None):
        """Validate the settings (a bad one is a 400 naming it) and queue the job; ``prompt_text`` is the
        request's own words, which ``form: auto`` reads."""
        engine = worker.engine
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
    async def collect(job, request: Request) -> str | None:
        """A non-streaming job's whole text. Past ``generation_timeout_s`` the job is stopped and its text so far
        is the answer; a client that went away cancels the job (None), so it stops holding the model."""
        task = asyncio.ensure_future(job.text())
        deadline = time.monotonic() + limits.generation_timeout_s
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

    async def timed(job) -> AsyncIterator[str]:
        """A streaming job's deltas, stopped past ``generation_timeout_s`` (the stream then ends normally)."""
        deadline = time.monotonic() + limits.generation_timeout_s
        async for delta in job:
            yield delta
            if time.monotonic() > deadline:
                job.cancel.set()

    # ------------------------------------------------------------------ OpenAI API
    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "quill",
                                            "context_length": w.engine.context_length} for n, w in workers.items()]}

    def check_chars(n: int, param: str) -> None:
        """Checked before tokenizing: a huge prompt costs its tokenization even when it is refused after."""
        if n > limits.max_prompt_chars:
            raise ApiError(400, f"the prompt is {n} characters; this server allows {limits.max_prompt_chars}",
                           param=param, code="context_length_exceeded")

    @app.post("/v1/chat/completions")
    async def chat_completions(req: oa.ChatRequest, request: Request):
        worker = worker_for(req.model)
        messages = [m.as_quill() for m in req.messages]
        check_chars(sum(len(m["content"]) for m in messages), "messages")
        try:
            prompt_ids = worker.engine.chat_prompt(messages)
        except ValueError as err:
            raise ApiError(400, str(err), param="messages") from None
        asked = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
        return await answer(submit(worker, prompt_ids, req.sampling(), asked), req, request, chat=True)

    @app.post("/v1/completions")
    async def completions(req: oa.CompletionRequest, request: Request):
        worker = worker_for(req.model)
        check_chars(len(req.text), "prompt")
        job = submit(worker, worker.engine.text_prompt(req.text), req.sampling(), req.text)
        return await answer(job, req, request, chat=False)

    async def answer(job, req, request: Request, chat: bool):
        """A job's answer in OpenAI's shape: one response, or SSE chunks (chat: deltas after a role chunk;
        completions: text), then the finish reason, the usage if asked for, and [DONE]."""
        cid, created = oa.new_id("chatcmpl" if chat else "cmpl"), oa.now()
        empty = {} if chat else ""

        def chunk(delta, finish=None) -> dict:
            return (oa.chat_chunk if chat else oa.completion_chunk)(cid, req.model, created, delta, finish)

        if not req.stream:
            text = await collect(job, request)
            if text is None:
                return _error(499, "client closed the request", code="client_closed")
            r = job.result
            respond = oa.chat_response if chat else oa.completion_response
            return respond(cid, req.model, created, text, _finish(r), r.prompt_tokens, r.completion_tokens)

        async def events() -> AsyncIterator[str]:
            if chat:
                yield _sse(chunk({"role": "assistant", "content": ""}))
            async for delta in timed(job):
                yield _sse(chunk({"content": delta} if chat else delta))
            r = job.result
            yield _sse(chunk(empty, _finish(r)))
            if req.include_usage:
                yield _sse({**chunk(empty), "choices": [], "usage": oa.usage(r.prompt_tokens, r.completion_tokens)})
            yield "data: [DONE]\n\n"
        return _stream(events())

    # ------------------------------------------------------------------ arena and web page
    from quill.generate.arena_api import add_arena_routes
    add_arena_routes(app, worker_for, submit, ApiError)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/web", StaticFiles(directory=WEB), name="web")
    return app


def _finish(result) -> str:
    """OpenAI's finish reasons: a generation stopped by the time limit ends like one cut by max_tokens."""
    return "length" if result.finish_reason == "cancelled" else result.finish_reason


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# ---------------------------------------------------------------------------- CLI entry
def parse_specs(runs: list[str]) -> list[tuple[str, str]]:
    """``NAME=PATH`` or ``PATH`` -> (name, spec); default name: the folder's name (a run's ``model`` folder is
    named after its stage's run) or the preset; clashes get ``-2``, ``-3``."""
    out: list[tuple[str, str]] = []
    for item in runs:
        name, sep, spec = item.partition("=")
        if not sep or not name or Path(item).exists():
            spec = item
            path = Path(item).expanduser()
            name = (path.resolve().parent.parent.name if path.name == "model" else path.resolve().name) \
                if path.is_dir() else item
        base, i = name, 2
        while name in {n for n, _ in out}:
            name, i = f"{base}-{i}", i + 1
        out.append((name, spec))
    return out


def default_arena_db(specs: list[tuple[str, str]]) -> Path:
    first = Path(specs[0][1]).expanduser()
    return (first / "arena.sqlite") if first.is_dir() else Path("arena.sqlite")


def run_server(runs: list[str], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
               arena_db: str | None = None, limits: ServeLimits | None = None, backend: str | None = None,
               quantize: str | None = None, defaults: dict[str, Any] | None = None) -> int:
    """``defaults``: sampling settings (``quill serve --form auto``) over each run's own, under a request's."""
    import uvicorn
    SamplingParams.from_settings(None, **(defaults or {}))  # a bad default fails before any model loads
    specs = parse_specs(runs)
    loaded: dict[str, Engine] = {}
    engines: dict[str, Engine] = {}
    for name, spec in specs:
        key = str(Path(spec).expanduser().resolve()) if Path(spec).expanduser().exists() else spec
        if key not in loaded:
            print(f"loading {name} from {spec} …", flush=True)
            loaded[key] = engine = Engine.load(spec, name=name, backend=backend, quantize=quantize)
            if defaults:
                engine.defaults = engine.params(**defaults)  # a bad value fails here, before serving
        engines[name] = loaded[key]
    db = Path(arena_db) if arena_db else default_arena_db(specs)
    app = create_app(engines, arena_db=db, api_key=api_key, limits=limits)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", flush=True)
    print(f"quill: serving {', '.join(engines)} on http://{host}:{port}/  (arena votes: {db})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
