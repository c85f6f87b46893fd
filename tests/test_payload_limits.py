"""Payload streaming is bounded: a split into millions of chunks is refused before anything is built."""

import pytest
from conftest import REPO
from fastapi import FastAPI
from fastapi.testclient import TestClient

from perfkit.serving import payloads
from perfkit.serving.payload_rest import payload_router


def test_check_chunking_bounds_the_number_of_chunks():
    payloads.check_chunking(1024, 1)
    payloads.check_chunking(payloads.MAX_SIZE_BYTES, payloads.MAX_SIZE_BYTES // payloads.MAX_CHUNKS)
    with pytest.raises(ValueError, match="chunk_bytes must be >="):
        payloads.check_chunking(payloads.MAX_SIZE_BYTES, 1)


def test_rest_stream_refuses_tiny_chunks_of_a_huge_payload_with_400():
    app = FastAPI()
    app.include_router(payload_router(REPO / "data" / "corpus"))
    client = TestClient(app)
    huge = {"kind": "document", "size_bytes": payloads.MAX_SIZE_BYTES, "chunk_bytes": 1}
    refused = client.get("/v1/payload/stream", params=huge)
    assert refused.status_code == 400
    ok = client.get("/v1/payload/stream", params={"kind": "document", "size_bytes": 4096, "chunk_bytes": 1024})
    assert ok.status_code == 200 and len(ok.text.strip().splitlines()) >= 4
