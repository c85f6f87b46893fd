"""ASGI middleware of the reference server: what every request passes before and after its route."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from perfkit.hardware import now
from perfkit.serving import schemas
from perfkit.serving.admission import RateLimited, Refused
from perfkit.serving.metrics import ServingMetrics

log = logging.getLogger("perfkit.serving")
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models", "/health", "/healthz", "/metrics")


class Observe:
    """ASGI middleware: latency by route and status, requests in flight, errors by code (streaming-safe)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = 500
        t0 = now()

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe_response(route, status, now() - t0)


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes gets 413 in the OpenAI error shape.

    A declared Content-Length over the limit is refused before reading; a chunked body is counted
    as it arrives and refused once it passes the limit (FastAPI's own limit answers in plain text).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body over serving.max_body_bytes = {self.limit}"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await error_response(413, message)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, message)
            return msg

        await self.app(scope, counted, send)


def error_response(code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in the OpenAI shape: {"error": {"message", "type", "code"}}."""
    return JSONResponse(schemas.error_body(code, message), status_code=code, headers=headers)


class ApiError(Exception):
    """A refusal a route raises: answered as `error_response(code, message, headers)`."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers


def add_error_handlers(app: FastAPI) -> None:
    """Every failure answers in the OpenAI error shape: 400 for a malformed body, the refusals' own codes with
    Retry-After (429 rate limited, 503 queue full or loading), 500 for the unexpected (logged, never a crash)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
        return error_response(400, "; ".join(parts[:5]) or "invalid request")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.message, exc.headers)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        code = 429 if isinstance(exc, RateLimited) else 503
        return error_response(code, str(exc), {"Retry-After": exc.retry_after_header})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return error_response(500, f"internal error: {type(exc).__name__}")
