"""``quill serve``: an OpenAI-compatible API, the web page (chat + blind A/B arena) and the arena's votes.

``create_app`` only assembles the service: the middleware (body limit, API key), the error handlers, the
shared state (``Service``: workers, limits, arena store) and one router per concern — the OpenAI API
(:mod:`quill.apps.openai_api`), the arena (:mod:`quill.apps.arena_api`) and the web page
(:mod:`quill.apps.page`). Every error is answered in OpenAI's shape (:mod:`quill.apps.api_errors`).

Limits (body size and read time, prompt length, ``max_tokens``, concurrent generations, generation time) are
in :mod:`quill.apps.limits`; a non-streaming client that goes away cancels its generation too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from quill.apps.api_errors import add_api_key_check, add_error_handlers
from quill.data.arena import ArenaStore
from quill.apps.arena_api import arena_router
from quill.apps.limits import BodyLimit, ServeLimits
from quill.apps.openai_api import openai_router
from quill.apps.page import mount_web, page_router
from quill.apps.service import Service
from quill.apps.worker import make_workers
from quill.decoding.engine import Engine
from quill.decoding.sampling import SamplingParams


def create_app(engines: dict[str, Engine], arena_db: str | Path | None = None, api_key: str | None = None,
               max_queue: int | None = None, limits: ServeLimits | None = None) -> FastAPI:
    """The whole service for already-loaded engines (tests pass tiny ones; ``run_server`` loads runs).
    ``max_queue`` (kept for callers that set only that) overrides ``limits.max_concurrent``."""
    limits = limits or ServeLimits()
    app = FastAPI(title="quill", docs_url="/docs", redoc_url=None)
    service = Service(make_workers(engines, max_queue or limits.max_concurrent), limits,
                      ArenaStore(arena_db) if arena_db else None)
    app.state.limits, app.state.workers, app.state.arena = limits, service.workers, service.arena
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)
    add_error_handlers(app)
    add_api_key_check(app, api_key)  # added last, so it runs first: no key, no body read
    app.include_router(openai_router(service))
    app.include_router(arena_router(service))
    app.include_router(page_router())
    mount_web(app)
    return app


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
