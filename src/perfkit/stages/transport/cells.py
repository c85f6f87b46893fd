"""Transport measurements: one payload cell (route x size x mode) and token streams over both protocols."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from perfkit.config import Config, PayloadKind
from perfkit.hardware import now
from perfkit.load.payload_load import size_label
from perfkit.measure import Latency, Spread, repeat
from perfkit.models import load_tokenizer
from perfkit.probes.wire import WireCounter
from perfkit.serving import payloads
from perfkit.serving import perfkit_pb2 as pb
from perfkit.workload import summary_prompts

# Compression is the compression stage's subject: here REST bodies travel as they are, as gRPC's do.
IDENTITY = {"Accept-Encoding": "identity"}


@dataclass(frozen=True)
class Route:
    """One way to carry a payload kind: REST as JSON numbers / base64 floats, or gRPC protobuf."""

    protocol: str  # rest | grpc
    encoding: str  # json | json-base64 | protobuf | protobuf-bytes
    kind: PayloadKind

    @property
    def raw_floats(self) -> bool:
        return self.encoding == "protobuf-bytes"

    @property
    def rest_format(self) -> payloads.EncodingFormat:
        return "base64" if self.encoding == "json-base64" else "float"

    def encode(self, content: payloads.Content) -> bytes:
        if self.protocol == "grpc":
            return payloads.encode_proto(content, self.raw_floats)
        return payloads.encode_json(content, self.rest_format)

    def decode(self, body: bytes) -> payloads.Content:
        return payloads.decode_proto(body) if self.protocol == "grpc" else payloads.decode_json(body, self.kind)


def routes(cfg: Config) -> list[Route]:
    out = []
    for kind in cfg.transport.kinds:
        rest = [{"float": "json", "base64": "json-base64"}[e] for e in cfg.transport.rest_encodings]
        grpc = [{"packed": "protobuf", "bytes": "protobuf-bytes"}[e] for e in cfg.transport.grpc_encodings]
        out += [Route("rest", e, kind) for e in (rest if kind == "embeddings" else ["json"])]
        out += [Route("grpc", e, kind) for e in (grpc if kind == "embeddings" else ["protobuf"])]
    return out


@dataclass(frozen=True)
class PayloadCell:
    route: Route
    size_kb: int
    mode: str  # unary | chunked
    latency: Latency
    capped: bool
    bytes_on_wire: float
    logical_bytes: int
    body_bytes: int
    serialize: Latency
    deserialize: Latency
    round_p50: tuple[float, ...] = ()  # latency p50 (ms) of each round, when cells of several rounds are merged
    round_cv: tuple[float, ...] = ()

    @property
    def spread(self) -> Spread:
        """Latency p50 (ms) over the rounds; the within-round CV is the rounds' mean CV."""
        if not self.round_p50:
            return Spread((self.latency.p50,), self.latency.cv, self.latency.count)
        return Spread(self.round_p50, statistics.fmean(self.round_cv), self.latency.count)

    @classmethod
    def merge(cls, rounds: list[tuple[PayloadCell, tuple[float, ...]]]) -> PayloadCell:
        """The same cell over several rounds: (cell, its timed seconds) each; every sample pooled, p50 per round kept."""
        first = rounds[0][0]
        pooled = [x for _, seconds in rounds for x in seconds]
        return dataclasses.replace(
            first,
            latency=Latency.from_samples(pooled),
            capped=any(c.capped for c, _ in rounds),
            bytes_on_wire=statistics.fmean(c.bytes_on_wire for c, _ in rounds),
            round_p50=tuple(c.latency.p50 for c, _ in rounds),
            round_cv=tuple(c.latency.cv for c, _ in rounds),
        )

    @property
    def variant(self) -> str:
        r = self.route
        return f"{r.protocol}-{r.encoding}-{r.kind}-{self.mode}-{size_label(self.size_kb)}"

    def metrics(self) -> dict[str, Any]:
        return {
            "latency_ms_p50": self.latency.p50,
            **({"latency_ms_p99": self.latency.p99} if self.latency.p99_reliable else {}),
            "latency_count": self.latency.count,
            "rounds": max(1, len(self.round_p50)),
            "capped": self.capped,
            "serialize_ms_p50": self.serialize.p50,
            "deserialize_ms_p50": self.deserialize.p50,
            "bytes_on_wire": self.bytes_on_wire,
            "logical_bytes": self.logical_bytes,
            "body_bytes": self.body_bytes,
        }


@dataclass(frozen=True)
class TokenStreams:
    """Token streaming over one protocol: TTFT and E2E per request, and the texts generated."""

    protocol: str
    ttft: Latency
    e2e: Latency
    texts: tuple[str, ...]
    ttft_s: tuple[float, ...] = ()  # raw samples, pooled when rounds are merged
    e2e_s: tuple[float, ...] = ()
    round_ttft_p50: tuple[float, ...] = ()  # TTFT p50 (ms) of each round

    @property
    def ttft_spread(self) -> Spread:
        values = self.round_ttft_p50 or (self.ttft.p50,)
        return Spread(values, self.ttft.cv if len(values) == 1 else 0.0, self.ttft.count)

    def metrics(self) -> dict[str, Any]:
        return self.ttft.as_metrics("ttft") | self.e2e.as_metrics("latency")


def _fetcher(route: Route, mode: str, size: int, chunk: int, rest: httpx.Client, stub: Any) -> Callable[[], payloads.Content]:
    """One request over `route`, returning the parsed content."""
    if route.protocol == "grpc":
        req = pb.PayloadRequest(kind=payloads.PROTO_KIND[route.kind], size_bytes=size, chunk_bytes=chunk, raw_floats=route.raw_floats)
        if mode == "unary":
            return lambda: payloads.from_proto(stub.GetPayload(req, timeout=300))
        return lambda: payloads.join([payloads.from_proto(m) for m in stub.StreamPayload(req, timeout=300)])
    params = {"kind": route.kind, "size_bytes": size, "encoding_format": route.rest_format, "chunk_bytes": chunk}

    def unary() -> payloads.Content:
        r = rest.get("/v1/payload", params=params)
        r.raise_for_status()
        return payloads.decode_json(r.content, route.kind)

    def chunked() -> payloads.Content:
        with rest.stream("GET", "/v1/payload/stream", params=params) as r:
            r.raise_for_status()
            return payloads.join([payloads.decode_json(line, route.kind) for line in r.iter_lines() if line])

    return unary if mode == "unary" else chunked


def payload_cell(
    cfg: Config, route: Route, size_kb: int, mode: str, rest: httpx.Client, stub: Any, port: int
) -> tuple[PayloadCell, tuple[float, ...]]:
    """One round of one cell: the cell and its timed seconds (for pooling across rounds)."""
    t = cfg.transport
    size = size_kb * 1024
    expected = payloads.build(route.kind, size, cfg.corpus_dir)
    fetch = _fetcher(route, mode, size, t.chunk_kb * 1024, rest, stub)
    with WireCounter(port) as wire:
        if not expected.same_as(fetch()):  # the first answer doubles as the first warm-up
            raise RuntimeError(f"{route} {mode} {size_label(size_kb)}: the payload did not arrive intact")
        reps = repeat(fetch, warmup=max(0, cfg.measure.warmup - 1), min_repeats=cfg.measure.min_repeats, max_duration_s=t.cell_max_s)
    assert wire.count is not None
    # Warm already: `body` was just encoded here, and every fetch above decoded with the same code.
    body = route.encode(expected)
    budget = dict(warmup=0, min_repeats=cfg.measure.min_repeats, max_duration_s=t.cell_max_s / 2)
    return PayloadCell(
        route,
        size_kb,
        mode,
        reps.latency,
        reps.capped,
        bytes_on_wire=wire.count.total / (1 + reps.warmup + len(reps.seconds)),
        logical_bytes=expected.logical_bytes,
        body_bytes=len(body),
        serialize=repeat(lambda: route.encode(expected), **budget).latency,
        deserialize=repeat(lambda: route.decode(body), **budget).latency,
    ), reps.seconds


def _sse(rest: httpx.Client, cfg: Config, messages: list[dict[str, str]]) -> tuple[float, float, str]:
    body = {
        "model": cfg.model.name,
        "messages": messages,
        "max_tokens": cfg.workload.max_new_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    t0, ttft, parts = now(), None, []
    with rest.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            for choice in json.loads(line[5:]).get("choices") or ():
                if text := (choice.get("delta") or {}).get("content"):
                    parts.append(text)
                    ttft = ttft if ttft is not None else now() - t0
    return ttft if ttft is not None else now() - t0, now() - t0, "".join(parts)


def _grpc_stream(stub: Any, cfg: Config, messages: list[dict[str, str]]) -> tuple[float, float, str]:
    req = pb.GenerateRequest(messages=[pb.ChatMessage(**m) for m in messages], max_tokens=cfg.workload.max_new_tokens, ignore_eos=True)
    t0, ttft, parts = now(), None, []
    for event in stub.GenerateStream(req, timeout=600):
        if event.text:
            parts.append(event.text)
            ttft = ttft if ttft is not None else now() - t0
    return ttft if ttft is not None else now() - t0, now() - t0, "".join(parts)


def token_streams(cfg: Config, rest: httpx.Client, stub: Any) -> list[TokenStreams]:
    tokenizer = load_tokenizer(cfg.resolve(cfg.model.path))
    prompts = summary_prompts(
        tokenizer, cfg.corpus_dir, cfg.transport.token_streams, cfg.workload.prompt_tokens, cfg.workload.passage_words, cfg.workload.seed
    )
    calls = {"rest": lambda m: _sse(rest, cfg, m), "grpc": lambda m: _grpc_stream(stub, cfg, m)}
    if cfg.measure.warmup:
        for call in calls.values():
            call(list(prompts[0].messages))
    # Interleaved, prompt by prompt, so that a change in the machine's load hits both protocols alike.
    runs: dict[str, list[tuple[float, float, str]]] = {p: [] for p in calls}
    for prompt in prompts:
        for protocol, call in calls.items():
            runs[protocol].append(call(list(prompt.messages)))
    return [
        TokenStreams(
            p,
            Latency.from_samples([r[0] for r in rs]),
            Latency.from_samples([r[1] for r in rs]),
            tuple(r[2] for r in rs),
            tuple(r[0] for r in rs),
            tuple(r[1] for r in rs),
        )
        for p, rs in runs.items()
    ]


def merge_streams(rounds: list[list[TokenStreams]]) -> list[TokenStreams]:
    """Each protocol's token streams over the rounds: samples pooled, the texts of the first round, TTFT p50 per round."""
    out = []
    for i, first in enumerate(rounds[0]):
        mine = [r[i] for r in rounds]
        ttft, e2e = [x for m in mine for x in m.ttft_s], [x for m in mine for x in m.e2e_s]
        texts = first.texts if all(m.texts == first.texts for m in mine) else ()  # () when a round generated other text
        out.append(
            TokenStreams(
                first.protocol,
                Latency.from_samples(ttft),
                Latency.from_samples(e2e),
                texts,
                tuple(ttft),
                tuple(e2e),
                tuple(m.ttft.p50 for m in mine),
            )
        )
    return out
