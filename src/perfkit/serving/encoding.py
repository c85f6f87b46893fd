"""HTTP content codings: compressed request bodies in, negotiated compression out (one ASGI middleware).

Requests. A body sent with `Content-Encoding: gzip | br | zstd` is decoded before the app sees it,
chunk by chunk as it arrives, by a decoder that stops at `max_decoded_bytes`: a decompression
bomb (1 GiB of zeros is 1.6 KB of Brotli) is answered 413 as soon as its output passes the limit,
so memory stays bounded by the limit, not by what the sender packed. A coding the server does not
implement is answered 415, a body that does not decode 400. Errors carry the OpenAI error body.

Responses. The coding is chosen by HTTP content negotiation (RFC 9110 §12.5.3): each coding in
`Accept-Encoding` has a weight `q` (default 1); `*` stands for every coding not named; `identity`
(no coding) is acceptable unless given `q=0` (directly or through `*`). The server picks the
supported coding with the highest weight, ties broken by its own preference (br, zstd, gzip),
and sends identity when a named `identity` weighs more, when the body is under `min_size` (a
header costs more than it saves), or when nothing else is acceptable; when not even identity
is, 406.
`text/event-stream` is never compressed: a compressor holds bytes back until it has enough to
code, which delays every streamed token. A body sent in several parts is compressed as a stream
flushed after each part, so chunked responses still arrive part by part.

Coding is CPU work (Brotli at level 4 codes tens of MB/s here): decoding a request and coding a
response part over OFF_LOOP_BYTES run in a worker thread, so a large body never holds up the event
loop, and with it every other client.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import brotli
import zstandard
from starlette.concurrency import run_in_threadpool

from perfkit.optim.compress import DecodedTooLarge, for_encoding
from perfkit.serving.schemas import error_body

IDENTITY = "identity"
PREFERENCE = ("br", "zstd", "gzip")
LEVELS = {"br": 4, "zstd": 3, "gzip": 6}
NEVER_COMPRESS = ("text/event-stream",)
OFF_LOOP_BYTES = 64 * 1024  # a part this big is coded in a worker thread (a thread hop costs ~0.1 ms)


def parse_accept_encoding(header: str) -> dict[str, float]:
    """`gzip;q=0.5, br` -> {"gzip": 0.5, "br": 1.0}; a malformed weight counts as 0."""
    weights: dict[str, float] = {}
    for item in header.split(","):
        token, *params = (p.strip() for p in item.split(";"))
        if not token:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        weights[token.lower()] = q
    return weights


def negotiate(header: str | None, supported: Sequence[str] = PREFERENCE) -> str | None:
    """The coding to answer with: one of `supported`, `identity`, or None when nothing is acceptable."""
    if header is None:
        return IDENTITY  # no preference stated: any coding is allowed, the plain body is the safe one
    weights = parse_accept_encoding(header)
    star = weights.get("*")
    best, best_q = None, 0.0
    for coding in supported:  # in preference order, so a tie keeps the earlier coding
        q = weights.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    named = weights.get(IDENTITY)  # identity competes on weight only when named; otherwise it is the fallback
    if best is not None and (named is None or best_q >= named):
        return best
    identity_q = named if named is not None else (star if star is not None else 1.0)
    return IDENTITY if identity_q > 0 else None


def _header(scope: Mapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps(error_body(status, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ContentEncodingMiddleware:
    """Decode compressed request bodies (bounded) and compress responses by negotiation."""

    def __init__(
        self,
        app: Any,
        *,
        max_decoded_bytes: int = 64 << 20,
        min_size: int = 1024,
        levels: Mapping[str, int] = LEVELS,
        preference: Sequence[str] = PREFERENCE,
    ) -> None:
        self.app = app
        self.max_decoded_bytes = max_decoded_bytes
        self.min_size = min_size
        self.levels = dict(levels)
        self.preference = tuple(preference)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        coding = (_header(scope, b"content-encoding") or IDENTITY).strip().lower()
        if coding != IDENTITY:
            decoded = await self._decode_body(scope, coding, receive, send)
            if decoded is None:
                return
            scope, receive = decoded
        chosen = negotiate(_header(scope, b"accept-encoding"), self.preference)
        if chosen is None:
            await _send_error(send, 406, f"no acceptable content coding; this server offers: {', '.join(self.preference)}, identity")
            return
        if chosen == IDENTITY or scope.get("method") == "HEAD":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _CompressingSend(send, chosen, self.levels.get(chosen), self.min_size))

    async def _decode_body(self, scope: dict[str, Any], coding: str, receive: Any, send: Any) -> tuple[dict[str, Any], Any] | None:
        """Read and decode the whole body; returns the app's scope and receive, or None once an error is sent."""
        if coding not in PREFERENCE:
            await _send_error(send, 415, f"unsupported Content-Encoding {coding!r}; supported: {', '.join(PREFERENCE)}, identity")
            return None
        decoder = for_encoding(coding).decoder(self.max_decoded_bytes)
        parts: list[bytes] = []
        more = True
        try:
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                parts.append(await run_in_threadpool(decoder.feed, message.get("body", b"")))
                more = message.get("more_body", False)
        except DecodedTooLarge:
            await _send_error(send, 413, f"decompressed request body exceeds {self.max_decoded_bytes} bytes")
            return None
        except (zlib.error, brotli.error, zstandard.ZstdError) as exc:
            await _send_error(send, 400, f"request body is not valid {coding}: {exc}")
            return None
        body = b"".join(parts)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-encoding", b"content-length")]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # after the body: the server's disconnect notice
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return {**scope, "headers": headers}, replay


class _CompressingSend:
    """Wraps `send`: compresses the response body with the negotiated coding where that helps."""

    @staticmethod
    async def _code(code: Any, body: bytes) -> bytes:
        return await run_in_threadpool(code, body) if len(body) > OFF_LOOP_BYTES else code(body)

    def __init__(self, send: Any, coding: str, level: int | None, min_size: int) -> None:
        self.send, self.codec, self.min_size = send, for_encoding(coding, level), min_size
        self.start: dict[str, Any] | None = None
        self.stream: Any = None
        self.passthrough = False

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.start = message  # held until the first body part shows whether compressing pays
            return
        if message["type"] != "http.response.body" or self.passthrough:
            await self.send(message)
            return
        body, more = message.get("body", b""), message.get("more_body", False)
        if self.stream is not None:
            out = await self._code(self.stream.write, body) + (b"" if more else self.stream.finish())
            await self.send({"type": "http.response.body", "body": out, "more_body": more})
            return
        assert self.start is not None, "response body before response start"
        headers = [(k.lower(), v) for k, v in self.start.get("headers", ())]
        content_type = dict(headers).get(b"content-type", b"").decode("latin-1").lower()
        skip = (
            any(content_type.startswith(t) for t in NEVER_COMPRESS)
            or b"content-encoding" in dict(headers)
            or self.start["status"] < 200
            or self.start["status"] in (204, 304)
            or (not more and len(body) < self.min_size)
        )
        if skip:
            self.passthrough = True
            await self.send(self.start)
            await self.send(message)
            return
        vary = dict(headers).get(b"vary")
        headers = [(k, v) for k, v in headers if k not in (b"content-length", b"vary")]
        headers += [
            (b"content-encoding", self.codec.encoding.encode()),
            (b"vary", vary + b", accept-encoding" if vary else b"accept-encoding"),
        ]
        if more:  # a streamed body: compress part by part, each flushed, length unknown
            self.stream = self.codec.stream()
            await self.send({**self.start, "headers": headers})
            await self.send({"type": "http.response.body", "body": await self._code(self.stream.write, body), "more_body": True})
            return
        out = await self._code(self.codec.compress, body)
        headers.append((b"content-length", str(len(out)).encode()))
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": out, "more_body": False})
