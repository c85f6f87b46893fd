"""The transport stage: payload forms, kernel byte counts, the C6 verdict, and the notebook end to end."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from perfkit import config, report
from perfkit.measure import Latency
from perfkit.serving import payloads
from perfkit.serving.payload_rest import payload_router
from perfkit.stage import run_stage
from perfkit.load.payload_load import LoadCell
from perfkit.load.results import RequestTiming, summarize
from perfkit.transport import C6_METRIC, PayloadCell, Route, TokenStreams, TransportResults
from perfkit.wire import WireCounter

from conftest import REPO

CORPUS = REPO / "data" / "corpus"
C6 = report.claim_checks(REPO / "data" / "claims.yaml", "C6")[C6_METRIC]


@pytest.mark.parametrize("kind", payloads.KINDS)
@pytest.mark.parametrize("size", [1024, 65536, 300_001])
def test_every_wire_form_round_trips_the_content_exactly(kind, size):
    content = payloads.build(kind, size, CORPUS)
    if kind == "embeddings":
        assert content.vectors.shape[1] == payloads.EMBEDDING_DIM and abs(content.logical_bytes - size) <= 768
        assert np.allclose(np.linalg.norm(content.vectors, axis=1), 1.0, atol=1e-5)
    else:
        assert content.logical_bytes == size
    forms = [payloads.decode_proto(payloads.encode_proto(content, raw)) for raw in (False, True)]
    forms += [payloads.decode_json(payloads.encode_json(content, f), kind) for f in ("float", "base64")]
    forms.append(payloads.join(payloads.chunks(content, 4096)))
    assert all(content.same_as(f) for f in forms)


def test_protobuf_packs_floats_and_json_spells_them_out():
    content = payloads.build("embeddings", 1 << 20, CORPUS)
    proto = len(payloads.encode_proto(content))
    raw = len(payloads.encode_proto(content, raw_floats=True))
    b64 = len(payloads.encode_json(content, "base64"))
    numbers = len(payloads.encode_json(content, "float"))
    assert content.logical_bytes <= proto < 1.01 * content.logical_bytes  # 4 bytes a float plus framing
    assert content.logical_bytes <= raw < content.logical_bytes + 16  # one length-prefixed field
    assert raw < proto < b64 < numbers


def test_chunks_are_in_order_near_the_chunk_size_and_never_split_a_character():
    text = payloads.Content("document", text="é" * 10_000 + "abc")
    pieces = payloads.chunks(text, 1001)
    assert "".join(p.text for p in pieces) == text.text
    assert all(len(p.text.encode()) <= 1002 for p in pieces)


def test_rest_twins_answer_the_same_content_unary_and_as_ndjson_lines():
    app = FastAPI()
    app.include_router(payload_router(CORPUS))
    client = TestClient(app)
    expected = payloads.build("chat_batch", 50_000, CORPUS)
    r = client.get("/v1/payload", params={"kind": "chat_batch", "size_bytes": 50_000})
    assert r.headers["content-type"] == "application/json" and expected.same_as(payloads.decode_json(r.content, "chat_batch"))
    r = client.get("/v1/payload/stream", params={"kind": "chat_batch", "size_bytes": 50_000, "chunk_bytes": 8192})
    lines = [json.loads(line) for line in r.text.splitlines() if line]
    assert r.headers["content-type"] == "application/x-ndjson" and len(lines) > 1
    assert expected.same_as(payloads.join([payloads.from_json(obj, "chat_batch") for obj in lines]))
    assert client.get("/v1/payload", params={"kind": "video", "size_bytes": 10}).status_code >= 400
    assert client.get("/v1/payload", params={"kind": "document", "size_bytes": payloads.MAX_SIZE_BYTES + 1}).status_code >= 400


def test_wire_counter_reads_the_bytes_a_connection_carried():
    body = b"y" * 100_000

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            client.get("/")
            with WireCounter(port) as wire:
                for _ in range(3):
                    client.get("/")
        assert wire.count is not None and wire.count.connections == 1 and wire.count.closed == 0
        assert 3 * len(body) < wire.count.received < 3 * len(body) + 3 * 500  # body + status line and headers
        assert 3 * 30 < wire.count.sent < 3 * 500  # three GET request heads
    finally:
        server.shutdown()


def test_config_refuses_an_unknown_payload_kind_naming_the_allowed_ones():
    with pytest.raises(config.ConfigError, match="embeddings"):
        config.parse({"transport": {"kinds": ["video"]}}, root=REPO, stage="transport")


def _lat(ms: float) -> Latency:
    return Latency.from_samples([ms / 1000] * 3)


def _cell(protocol: str, encoding: str, kind: str, size_kb: int, ms: float, mode: str = "unary") -> PayloadCell:
    return PayloadCell(Route(protocol, encoding, kind), size_kb, mode, _lat(ms), False, 1.0, 1, 1, _lat(0.1), _lat(0.1))


def test_c6_verdict_and_per_size_winners_come_from_the_numbers():
    cells = (
        _cell("rest", "json", "embeddings", 1, 2.0), _cell("grpc", "protobuf", "embeddings", 1, 1.0),
        _cell("rest", "json", "embeddings", 8192, 1000.0), _cell("grpc", "protobuf", "embeddings", 8192, 100.0),
        _cell("grpc", "protobuf", "embeddings", 8192, 150.0, "chunked"),
        _cell("rest", "json", "document", 8192, 40.0), _cell("grpc", "protobuf", "document", 8192, 50.0),
    )
    streams = tuple(TokenStreams(p, _lat(100.0), _lat(1000.0), ("same",)) for p in ("rest", "grpc"))
    loads = tuple(
        LoadCell(protocol, 1, summarize([RequestTiming(i, i * step, step, 200, done=True) for i in range(10)],
                                        mode="closed", users=1))
        for protocol, step in (("rest", 0.1), ("grpc", 0.05))
    )
    results = TransportResults(cells, streams, loads, 1.0, C6)
    c6 = results.c6()
    assert c6["c6_size"] == "8MB" and c6["c6_by_kind"] == pytest.approx({"embeddings": 90.0, "document": -25.0})
    assert c6["c6_measured_reduction_pct"] == pytest.approx(32.5) and not c6["c6_holds"]
    assert c6["c6_claimed_reduction_pct"] == 35.0  # from the claims file; strict, so 32.5 does not hold
    assert c6["grpc_stream_vs_unary_pct"] == pytest.approx(50.0)
    small, large = results.winners()
    assert "gRPC by 50%" in small and "does not matter" in small
    assert "embeddings: gRPC by 90%" in large and "document: REST by 20%" in large and "it matters" in large
    conclusion = results.conclusion()
    assert "does not hold" in conclusion and results.tokens_match
    assert "**C6** (gRPC 35% lower latency than REST above 1 MB) does not hold here at 8MB" in conclusion
    assert "1KB: gRPC 20.0 vs REST 10.0 req/s (+100%)" in conclusion


def test_transport_notebook_runs_end_to_end_in_smoke_mode(perfkit_root: Path):
    (perfkit_root / "data" / "claims.yaml").symlink_to(REPO / "data" / "claims.yaml")
    metrics = json.loads(run_stage("transport", smoke=True, root=perfkit_root).read_text())
    summary = metrics.pop("summary")
    assert summary["tokens_match"] is True and summary["c6_verdict"] in ("holds", "does not hold")
    cells = {k: v for k, v in metrics.items() if "bytes_on_wire" in v}
    assert {k.split("-")[0] for k in cells} == {"rest", "grpc"} and any("-chunked-" in k for k in cells)
    for name, cell in cells.items():  # nothing is compressed here: the wire carries at least the content
        assert cell["bytes_on_wire"] >= cell["body_bytes"] >= cell["logical_bytes"], name
    loads = {k: v for k, v in metrics.items() if k.startswith("load-")}
    assert set(loads) == {"load-rest-1KB", "load-grpc-1KB"}
    assert all(v["throughput_rps"] > 0 and v["error_rate"] == 0 for v in loads.values())
    assert metrics["grpc-token-stream"]["ttft_ms_p50"] > 0
    assert (perfkit_root / "experiments" / "transport" / "transport.html").is_file()
