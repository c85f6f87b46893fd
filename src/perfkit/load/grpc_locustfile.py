"""Payload throughput under concurrency, REST vs gRPC: run by `locust` in its own process, never imported.

The transport stage starts Locust with this file and a JSON spec (`PERFKIT_LOAD_SPEC`): protocol,
payload kind and size, target, message limit, timings folder. N closed-loop users each fetch the
same payload again as soon as the last one arrived and parsed, so throughput is what the server
and the wire sustain at that size, not what the model does:

- `GrpcPayloadUser`: `GetPayload` over its own channel. grpcio's C core runs its own threads,
  which gevent cannot switch between: without `grpc.experimental.gevent.init_gevent()`, called
  before any channel exists, a blocking call holds the whole process and the N users run one at
  a time. With it, grpc's completion queue is polled cooperatively.
- `RestPayloadUser`: `GET /v1/payload`, the body parsed with `json.loads`, the twin of the
  protobuf parse the gRPC stub does.

Each request is timed here with `perf_counter` and written, as the `perfkit.load.results` rows the
load runner reads, to one JSONL file per process; Locust's own statistics round the times.
"""

from __future__ import annotations

import grpc
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel is created, or the users run one at a time

import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlencode  # noqa: E402

from locust import FastHttpUser, User, constant, events, task  # noqa: E402

from perfkit.serving import perfkit_pb2 as pb  # noqa: E402
from perfkit.serving import perfkit_pb2_grpc as pb_grpc  # noqa: E402
from perfkit.serving.grpc_client import channel  # noqa: E402

SPEC: dict[str, Any] = json.loads(Path(os.environ["PERFKIT_LOAD_SPEC"]).read_text())
# serving.payloads.PROTO_KIND, restated: importing payloads would load transformers into every Locust process.
PROTO_KIND = {"embeddings": pb.EMBEDDINGS, "document": pb.DOCUMENT, "chat_batch": pb.CHAT_BATCH}
REST_PATH = "/v1/payload?" + urlencode({"kind": SPEC["kind"], "size_bytes": SPEC["size_bytes"], "encoding_format": SPEC["encoding_format"]})
IDENTITY = {"Accept-Encoding": "identity"}  # uncompressed, like the gRPC messages
_issued = itertools.count()
_state: dict[str, Any] = {"out": None}


@events.init.add_listener
def _open_timings(environment: Any, **_: Any) -> None:
    path = Path(SPEC["timings_dir"]) / f"timings-local-{os.getpid()}.jsonl"
    _state["out"] = path.open("a", buffering=1)


def _row() -> dict[str, Any]:
    n = next(_issued)
    return {"index": n, "warmup": n < SPEC["warmup_requests"], "t_send": time.time(), "done": False}


def _finish(row: dict[str, Any], started: float, status: int, error: str | None) -> None:
    row.update(e2e_s=time.perf_counter() - started, status=status, error=error, done=error is None)
    out = _state["out"]
    if out is not None:
        out.write(json.dumps(row) + "\n")


class GrpcPayloadUser(User):
    """One closed-loop user fetching the payload over gRPC, on its own channel."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.channel = channel(SPEC["target"], SPEC["max_message_bytes"])
        self.stub = pb_grpc.PerfkitStub(self.channel)
        self.request = pb.PayloadRequest(kind=PROTO_KIND[SPEC["kind"]], size_bytes=SPEC["size_bytes"])

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def fetch(self) -> None:
        row = _row()
        started = time.perf_counter()
        error, status, size = None, 200, 0
        try:
            size = self.stub.GetPayload(self.request, timeout=SPEC["timeout_s"]).ByteSize()
        except grpc.RpcError as exc:
            error, status = f"{exc.code().name}: {exc.details()}"[:200], 0
        _finish(row, started, status, error)
        events.request.fire(
            request_type="grpc",
            name="GetPayload",
            response_time=row["e2e_s"] * 1000.0,
            response_length=size,
            exception=None if error is None else RuntimeError(error),
            context={},
        )


class RestPayloadUser(FastHttpUser):
    """One closed-loop user fetching the payload's REST twin, parsing the JSON body."""

    wait_time = constant(0)

    @task
    def fetch(self) -> None:
        row = _row()
        started = time.perf_counter()
        with self.client.get(REST_PATH, headers=IDENTITY, catch_response=True, name="/v1/payload") as resp:
            error = None
            if resp.status_code == 200:
                try:
                    json.loads(resp.content)
                except ValueError as exc:
                    error = f"unparseable body: {exc}"
                    resp.failure(error)
            else:
                error = f"HTTP {resp.status_code}"
            _finish(row, started, int(resp.status_code or 0), error)
