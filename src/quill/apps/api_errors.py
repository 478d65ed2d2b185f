"""The server's errors and API key, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every error, including malformed JSON, validation failures and unexpected exceptions, is answered in that
shape with a 4xx/5xx status and no traceback. The API key guards ``/v1/`` and ``/arena/`` (not the web page,
which asks for the key itself) and is compared in constant time.
"""
from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from quill.apps import openai_schema as oa

log = logging.getLogger("quill.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, oa.error_body(message, type_, param, code)


def error_response(status: int, message: str, **kw: Any) -> JSONResponse:
    return JSONResponse(oa.error_body(message, **kw), status_code=status)


def add_error_handlers(app: FastAPI) -> None:
    """Answer ``ApiError``, validation failures, Starlette's HTTP errors (404, 405) and crashes as OpenAI does."""
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError):
        return JSONResponse(err.body, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", code="invalid_json")
        msg = first.get("msg", "invalid request").removeprefix("Value error, ")
        param = ".".join(loc) or None
        return error_response(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException):
        return error_response(err.status_code, str(err.detail),
                              type_="not_found" if err.status_code == 404 else "error")

    @app.exception_handler(Exception)
    async def _crash(_: Request, err: Exception):
        log.exception("internal error")
        return error_response(500, "internal server error (see the server log)", type_="server_error")


def add_api_key_check(app: FastAPI, api_key: str | None) -> None:
    """A 401 for ``/v1/`` and ``/arena/`` requests without ``Authorization: Bearer KEY`` (no check without a key).
    Added after the body limit, so it runs first: a request without the key is refused before its body is read."""
    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and (request.url.path.startswith("/v1/") or request.url.path.startswith("/arena/")):
            sent = request.headers.get("authorization", "")
            token = sent[7:] if sent.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return error_response(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                      type_="authentication_error", code="invalid_api_key")
        return await call_next(request)
