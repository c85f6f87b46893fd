"""REST twins of the gRPC payload methods, for the transport stage's size sweep.

`GET /v1/payload` answers one JSON body (OpenAI-shaped: an embeddings list, a document, a list of
chat completions); `GET /v1/payload/stream` answers the same content as newline-delimited JSON
(`application/x-ndjson`), one line per chunk of about `chunk_bytes`, sent with chunked transfer
encoding as each line is ready: the HTTP/1.1 counterpart of a gRPC server stream. Embeddings go as
JSON numbers or, with `encoding_format=base64`, as base64 of the little-endian float32 bytes, as
the OpenAI embeddings API does.

Bodies are serialized with the standard library's `json.dumps` into a plain `Response`, the way a
lean Python server answers, rather than through FastAPI's `jsonable_encoder`, which walks every
float in Python and would make REST look slower than JSON is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException

from perfkit.config import PayloadKind
from perfkit.serving import payloads


def payload_router(corpus_dir: Path) -> APIRouter:
    """The payload endpoints, building content from the corpus under `corpus_dir`."""
    router = APIRouter(tags=["transport"])

    @router.get("/v1/payload")
    def get_payload(
        kind: PayloadKind,
        size_bytes: Annotated[int, Query(ge=1, le=payloads.MAX_SIZE_BYTES)],
        encoding_format: payloads.EncodingFormat = "float",
    ) -> Response:
        content = payloads.build(kind, size_bytes, corpus_dir)
        return Response(payloads.encode_json(content, encoding_format), media_type="application/json")

    @router.get("/v1/payload/stream")
    def stream_payload(
        kind: PayloadKind,
        size_bytes: Annotated[int, Query(ge=1, le=payloads.MAX_SIZE_BYTES)],
        chunk_bytes: Annotated[int, Query(ge=1, le=payloads.MAX_SIZE_BYTES)] = 64 * 1024,
        encoding_format: payloads.EncodingFormat = "float",
    ) -> StreamingResponse:
        try:
            payloads.check_chunking(size_bytes, chunk_bytes)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        content = payloads.build(kind, size_bytes, corpus_dir)

        def lines() -> Iterator[bytes]:
            for piece in payloads.chunks(content, chunk_bytes):
                yield payloads.encode_json(piece, encoding_format) + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return router
