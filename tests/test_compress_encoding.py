"""The content-coding middleware: negotiation, SSE left alone, bounded request decoding, 413 and 415."""

from __future__ import annotations

import asyncio
import tracemalloc

import brotli
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from perfkit.optim.compress import for_encoding
from perfkit.serving.encoding import ContentEncodingMiddleware, negotiate

BIG = {"data": [{"index": i, "text": "It is a truth universally acknowledged. " * 3} for i in range(300)]}


async def _echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body), "head": body[:20].decode(errors="replace")})


async def _big(request: Request) -> JSONResponse:
    return JSONResponse(BIG)


async def _small(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _sse(request: Request) -> StreamingResponse:
    async def events():
        for i in range(50):
            yield f'data: {{"token": "{"word " * 20}{i}"}}\n\n'
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _chunked(request: Request) -> StreamingResponse:
    async def parts():
        for i in range(20):
            yield (f"chunk {i} " + "Mr. Darcy " * 200).encode()

    return StreamingResponse(parts(), media_type="application/octet-stream")


def _app(**kwargs) -> Starlette:
    routes = [
        Route("/echo", _echo, methods=["POST"]),
        Route("/big", _big),
        Route("/small", _small),
        Route("/sse", _sse),
        Route("/chunked", _chunked),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(ContentEncodingMiddleware, **kwargs)
    return app


def _request(method: str, path: str, app: Starlette | None = None, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app or _app(max_decoded_bytes=1 << 20))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "identity"),
        ("", "identity"),
        ("gzip", "gzip"),
        ("br, zstd, gzip", "br"),
        ("gzip;q=1.0, br;q=0.5", "gzip"),
        ("br;q=0.2, zstd;q=0.8, gzip;q=0.8", "zstd"),
        ("*", "br"),
        ("*;q=0.5, br;q=0", "zstd"),
        ("br;q=0, zstd;q=0, gzip;q=0", "identity"),
        ("identity", "identity"),
        ("gzip;q=0.5, identity;q=1", "identity"),
        ("gzip, identity;q=0", "gzip"),
        ("deflate, identity;q=0", None),
        ("*;q=0", None),
        ("compress, deflate", "identity"),
        ("GZIP;Q=0.9", "gzip"),
        ("br;q=abc, gzip", "gzip"),
    ],
)
def test_negotiate_honours_q_values_star_and_identity(header: str | None, expected: str | None) -> None:
    assert negotiate(header) == expected


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip"])
def test_response_is_compressed_with_the_negotiated_coding(coding: str) -> None:
    r = _request("GET", "/big", headers={"Accept-Encoding": f"{coding}, identity;q=0.1"})
    assert r.status_code == 200
    assert r.headers["content-encoding"] == coding
    assert "accept-encoding" in r.headers["vary"].lower()
    assert int(r.headers["content-length"]) < len(r.content) / 3
    assert r.json() == BIG  # httpx decodes br, zstd and gzip


def test_identity_small_bodies_and_sse_are_sent_plain() -> None:
    assert "content-encoding" not in _request("GET", "/big", headers={"Accept-Encoding": "identity"}).headers
    assert "content-encoding" not in _request("GET", "/small", headers={"Accept-Encoding": "br"}).headers
    sse = _request("GET", "/sse", headers={"Accept-Encoding": "br, zstd, gzip"})
    assert "content-encoding" not in sse.headers
    assert sse.text.endswith("data: [DONE]\n\n")


def test_nothing_acceptable_is_406_with_openai_error_body() -> None:
    r = _request("GET", "/big", headers={"Accept-Encoding": "*;q=0"})
    assert r.status_code == 406
    assert set(r.json()["error"]) >= {"message", "type", "code"}


def test_streamed_body_is_compressed_part_by_part() -> None:
    r = _request("GET", "/chunked", headers={"Accept-Encoding": "zstd"})
    assert r.headers["content-encoding"] == "zstd"
    assert "content-length" not in r.headers
    assert r.content == b"".join((f"chunk {i} " + "Mr. Darcy " * 200).encode() for i in range(20))


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip"])
def test_compressed_request_body_is_decoded_for_the_app(coding: str) -> None:
    body = b'{"input": "' + b"Emma Woodhouse, handsome, clever " * 500 + b'"}'
    r = _request("POST", "/echo", content=for_encoding(coding).compress(body), headers={"Content-Encoding": coding})
    assert r.status_code == 200
    assert r.json() == {"bytes": len(body), "head": body[:20].decode()}


def test_brotli_bomb_gets_413_and_memory_stays_near_the_limit() -> None:
    packer, zeros = brotli.Compressor(quality=5), bytes(1 << 20)
    bomb = b"".join(packer.process(zeros) for _ in range(1024)) + packer.finish()  # 1 GiB of zeros
    assert len(bomb) < 4096
    tracemalloc.start()
    r = _request("POST", "/echo", content=bomb, headers={"Content-Encoding": "br"})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r.status_code == 413
    assert r.json()["error"]["code"] == 413
    assert peak < 16 << 20, f"peak Python memory {peak / 2**20:.0f} MiB for a 1 MiB limit"


def test_unsupported_content_encoding_is_415() -> None:
    r = _request("POST", "/echo", content=b"xx", headers={"Content-Encoding": "compress"})
    assert r.status_code == 415
    assert "supported: br, zstd, gzip" in r.json()["error"]["message"]


def test_undecodable_body_is_400() -> None:
    r = _request("POST", "/echo", content=b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400
