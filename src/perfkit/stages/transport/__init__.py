"""REST vs gRPC: what carrying a response costs, from 1 KB to 8 MB, unary and streamed (claim C6).

Both servers run the same engine, scheduler and payload builder (`serving.payloads`), so only the
transport differs: HTTP/1.1 + JSON (uvicorn, FastAPI) against HTTP/2 + protobuf (grpcio). Per
payload kind, size and mode, on one kept-alive connection per protocol:

- latency: client wall clock from the call to the parsed content (`measure.repeat`: warm-up, then
  repeats within `transport.cell_max_s`); the first answer is checked to equal the expected
  content exactly, so a fast wrong answer cannot win;
- serialize / deserialize: the same encoding and parsing code timed in this process, content to
  bytes and back (single-threaded CPU work);
- bytes on the wire: the connection's kernel TCP counters (`perfkit.wire`), per request;
- chunk streaming: the content as ~`chunk_kb` pieces, chunked HTTP lines vs gRPC stream messages;
- token streaming: server-sent events vs `GenerateStream` on the model, TTFT and E2E per token
  stream; the generated text must match, or the comparison is void;
- throughput under N closed-loop Locust users at `load_sizes_kb` (`load/grpc_locustfile.py`).

Embeddings dominate the differences: a float costs 4 bytes in protobuf, 5.33 in base64 and about
20 as a JSON number, and the JSON encoder and parser walk every one in Python. But Python protobuf
also fills a `repeated float` one Python float at a time, while base64 of the raw float32 bytes is a
single C call, so against base64 JSON the ranking can flip. Text costs the same bytes either way. The results compare
each size against one generation on this machine: where the
transport takes under 1% of it, the protocol does not matter for latency.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from perfkit.config import MAX_PAYLOAD_BYTES, PayloadKind, Section
from perfkit.stages.base import MEASURED_DATA, Plot, StageSpec


class TransportConfig(Section):
    sizes_kb: tuple[int, ...] = Field((1, 64, 1024, 8192), description="logical payload sizes swept, KiB")
    kinds: tuple[PayloadKind, ...] = ("embeddings", "document", "chat_batch")
    rest_encodings: tuple[Literal["float", "base64"], ...] = Field(
        ("float", "base64"), description="how REST carries embeddings: JSON numbers and/or base64 float32"
    )
    grpc_encodings: tuple[Literal["packed", "bytes"], ...] = Field(
        ("packed", "bytes"), description="how gRPC carries embeddings: packed repeated float and/or a float32 bytes field"
    )
    chunk_kb: int = Field(64, ge=1, le=65_536, description="payload chunk streaming: bytes per chunk, KiB")
    chunked_min_kb: int = Field(1024, ge=1, description="chunk streaming is measured for sizes from this up")
    cell_max_s: float = Field(1.0, gt=0, le=600, description="time cap per cell and round, warm-up included; capped cells say so")
    token_streams: int = Field(3, ge=1, le=1000, description="streamed generations per protocol for TTFT")
    load_sizes_kb: tuple[int, ...] = Field((1, 1024, 8192), description="sizes run under Locust; [] skips the load runs")
    load_kind: PayloadKind = Field("document", description="payload the Locust users fetch")
    load_rest_encoding: Literal["float", "base64"] = "base64"
    load_users: int = Field(4, ge=1, le=1000)
    load_duration_s: float = Field(4.0, gt=0, le=3600, description="Locust run time per protocol and size")
    grpc_max_message_bytes: int = Field(
        64 * 2**20, ge=1024, le=2**31 - 1, description="gRPC send/receive limit on server and client (grpc default: 4 MiB)"
    )

    @model_validator(mode="after")
    def _positive_sizes(self) -> TransportConfig:
        if not self.sizes_kb or min(self.sizes_kb) < 1 or min(self.load_sizes_kb, default=1) < 1:
            raise ValueError("sizes_kb, load_sizes_kb: positive KiB values (sizes_kb needs at least one)")
        if max(*self.sizes_kb, *self.load_sizes_kb) * 1024 > MAX_PAYLOAD_BYTES:
            raise ValueError(f"sizes_kb, load_sizes_kb: at most {MAX_PAYLOAD_BYTES // 1024} KiB (the servers' payload bound)")
        if not self.kinds or not self.rest_encodings or "packed" not in self.grpc_encodings:
            raise ValueError("kinds, rest_encodings: at least one each; grpc_encodings must include packed (claim C6)")
        return self


STAGE = StageSpec(
    name="transport",
    budget_s=220,
    title="Transport: REST (JSON) vs gRPC (protobuf), 1 KB to 8 MB",
    description="The same engine and payloads over both protocols: latency unary and chunk-streamed, serialize and "
    "parse time, bytes on the wire from the kernel's TCP counters, token streaming TTFT, Locust throughput.",
    run="perfkit.stages.transport.experiment:run",
    section=TransportConfig,
    reads=("measure", "model", "hardware", "serving", "workload"),
    version="2",
    data=MEASURED_DATA,
    plots=(Plot("cells", "size_kb", "latency_ms_p50"), Plot("load", "size", "throughput_rps")),
    order=60,
)
