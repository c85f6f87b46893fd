"""ASGI middleware of the reference server: what every request passes before and after its route."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from perfkit.hardware import now
from perfkit.serving import schemas
from perfkit.serving.metrics import ServingMetrics

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
