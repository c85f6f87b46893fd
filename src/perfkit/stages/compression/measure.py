"""Compression measurements: payloads, one codec timed on one payload, the re-check, REST and the shaped link."""

from __future__ import annotations

import gzip
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import brotli
import httpx
import pandas as pd
import zstandard

from perfkit import measure, stats
from perfkit.config import Config
from perfkit.models import Embedder
from perfkit.optim.compress import Codec, for_encoding, get
from perfkit.probes import netlink
from perfkit.serving import payloads
from perfkit.serving.encoding import LEVELS
from perfkit.workload import passages


def _json_bytes(obj: Any) -> bytes:
    # The separators Starlette's JSONResponse uses: the bytes a server actually sends.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def build_payloads(cfg: Config) -> dict[str, bytes]:
    """Each configured payload as the JSON body a server would send, at least `payload_kb` KiB, deterministic."""
    c = cfg.compression
    size = c.payload_kb * 1024
    corpus = cfg.corpus_dir
    out: dict[str, bytes] = {}
    for kind in c.payloads:
        if kind == "embeddings":
            texts = passages(corpus)
            embedder = Embedder.load(cfg.resolve(cfg.model.embedding_path) if cfg.model.embedding_path else None)
            rows = size // (embedder.dim * 19) + 1  # a float32 as JSON text is ~19-20 characters
            while True:
                vectors = embedder.embed([texts[i % len(texts)] for i in range(rows)], max_length=128)
                body = _json_bytes(payloads.to_json(payloads.Content("embeddings", vectors=vectors)))
                if len(body) >= size:
                    break
                rows += max(1, (size - len(body)) // (embedder.dim * 19) + 1)
        else:
            body = _json_bytes(payloads.to_json(payloads.build(kind, size, corpus)))
        out[kind] = body
    return out


def codecs(cfg: Config) -> list[Codec]:
    c = cfg.compression
    names = ["none"] + [f"gzip-{lv}" for lv in c.gzip_levels] + [f"zstd-{lv}" for lv in c.zstd_levels]
    return [get(n) for n in names + [f"brotli-{lv}" for lv in c.brotli_levels]]


@dataclass(frozen=True)
class CodecRun:
    """One codec at one level on one payload."""

    payload: str
    codec: Codec
    input_bytes: int
    output_bytes: int
    compress: measure.Latency
    decompress: measure.Latency
    capped: bool

    @property
    def ratio(self) -> float:
        return self.input_bytes / self.output_bytes

    def mb_s(self, latency: measure.Latency) -> float:
        return self.input_bytes / 1e6 / (latency.p50 / 1000) if latency.p50 > 0 else float("inf")

    def row(self) -> dict[str, Any]:
        return {
            "payload": self.payload,
            "codec": self.codec.name,
            "family": self.codec.family,
            "level": self.codec.level,
            "input_bytes": self.input_bytes,
            "bytes_on_wire": self.output_bytes,
            "ratio": self.ratio,
            "size_reduction_pct": 100 * (1 - self.output_bytes / self.input_bytes),
            "compress_ms_p50": self.compress.p50,
            "decompress_ms_p50": self.decompress.p50,
            "compress_mb_s": self.mb_s(self.compress),
            "decompress_mb_s": self.mb_s(self.decompress),
            "compress_cv": self.compress.cv,
            "decompress_cv": self.decompress.cv,
            "repeats": self.compress.count,
            "capped": self.capped,
        }


def time_codec(cfg: Config, name: str, body: bytes, codec: Codec) -> CodecRun:
    packed = codec.compress(body)
    if codec.decompress(packed) != body:
        raise AssertionError(f"{codec.name} did not round-trip {name}")
    c = cfg.compression
    kw = dict(warmup=c.warmup, min_repeats=c.min_repeats, min_duration_s=c.min_duration_s, max_duration_s=c.max_duration_s)
    comp = measure.repeat(lambda: codec.compress(body), **kw)  # type: ignore[arg-type]
    dec = measure.repeat(lambda: codec.decompress(packed), **kw)  # type: ignore[arg-type]
    return CodecRun(name, codec, len(body), len(packed), comp.latency, dec.latency, comp.capped or dec.capped)


def _direct(codec: Codec) -> tuple[Any, Any]:
    """The codec library called directly, without perfkit's wrapper: the reference for the speed check."""
    if codec.family == "gzip":
        return (lambda b: gzip.compress(b, compresslevel=codec.level, mtime=0)), gzip.decompress
    if codec.family == "zstd":
        return zstandard.ZstdCompressor(level=codec.level).compress, zstandard.ZstdDecompressor().decompress
    return (lambda b: brotli.compress(b, quality=codec.level)), brotli.decompress


def check_speed(run: CodecRun, body: bytes, cfg: Config) -> dict[str, Any]:
    """Time the same codec on the same input by a direct library call; agree within max(10%, 3 x CV)?"""
    comp_fn, dec_fn = _direct(run.codec)
    packed = comp_fn(body)
    out: dict[str, Any] = {"payload": run.payload, "codec": run.codec.name}
    for op, fn, arg, lat in (("compress", comp_fn, body, run.compress), ("decompress", dec_fn, packed, run.decompress)):
        fn(arg)
        seconds, deadline = [], time.perf_counter() + cfg.compression.max_duration_s
        while len(seconds) < max(lat.count, 3) and (time.perf_counter() < deadline or len(seconds) < 1):
            t0 = time.perf_counter()
            fn(arg)
            seconds.append(time.perf_counter() - t0)
        direct = len(body) / 1e6 / statistics.median(seconds)
        stage = run.mb_s(lat)
        spread = max(lat.cv, stats.cv(seconds))
        tolerance = max(0.10, 3 * spread)
        diff = abs(stage - direct) / direct
        out |= {
            f"{op}_stage_mb_s": stage,
            f"{op}_direct_mb_s": direct,
            f"{op}_diff_pct": 100 * diff,
            f"{op}_tolerance_pct": 100 * tolerance,
            f"{op}_agrees": diff <= tolerance,
        }
    return out


def end_to_end(runs: list[CodecRun], link_mbit: tuple[float, ...]) -> pd.DataFrame:
    """Modelled seconds per payload, link speed and codec: compress + bytes / speed + decompress."""
    rows = []
    for r in runs:
        for mbit in link_mbit:
            wire_s = r.output_bytes * 8 / (mbit * 1e6)
            total = (r.compress.p50 + r.decompress.p50) / 1000 * (r.codec.family != "none") + wire_s
            rows.append({"payload": r.payload, "link_mbit": mbit, "codec": r.codec.name, "wire_s": wire_s, "total_s": total})
    return pd.DataFrame(rows)


def pareto(table: pd.DataFrame) -> pd.Series:
    """True where no other codec on the same payload is both smaller (higher ratio) and faster to compress."""
    flags = []
    for _, r in table.iterrows():
        same = table[table.payload == r.payload]
        dominated = (
            (same.ratio >= r.ratio) & (same.compress_mb_s >= r.compress_mb_s)
            & ((same.ratio > r.ratio) | (same.compress_mb_s > r.compress_mb_s))
        ).any()  # fmt: skip
        flags.append(not dominated)
    return pd.Series(flags, index=table.index)


def measure_rest(cfg: Config) -> list[dict[str, Any]]:
    """A real /v1/embeddings response, fetched with each Accept-Encoding from the REST server (httpx decodes zstd)."""
    from perfkit.serving.launch import launch

    c = cfg.compression
    pool = passages(cfg.corpus_dir)
    texts = [" ".join(pool[i % len(pool)].split()[: c.rest_words]) for i in range(c.rest_inputs)]
    body = {"model": cfg.model.embedding_name, "input": texts}
    rows = []
    overrides = {"serving.rate_limit.enabled": False}
    # The server's own warm-up is skipped: each Accept-Encoding gets a warm-up request below.
    with launch(cfg, overrides=overrides, warmup=False, probe_cold_start=False, timeout_s=c.launch_timeout_s) as server:
        with httpx.Client(base_url=server.base_url, timeout=120) as client:
            for accept in c.accept_encodings:
                last: dict[str, httpx.Response] = {}

                def fetch(accept: str = accept, last: dict[str, httpx.Response] = last) -> None:
                    r = client.post("/v1/embeddings", json=body, headers={"Accept-Encoding": accept})
                    r.raise_for_status()
                    last["r"] = r

                rep = measure.repeat(fetch, warmup=1, min_repeats=c.rest_requests)
                r = last["r"]
                coding = r.headers.get("content-encoding", "identity")
                server_ms = 0.0
                if coding != "identity":  # what the server's own compression of this body costs, at its level
                    codec, data = for_encoding(coding, LEVELS.get(coding)), r.content
                    server_ms = measure.repeat(lambda c=codec, d=data: c.compress(d), warmup=1, min_repeats=3).latency.p50
                rows.append(
                    {
                        "accept_encoding": accept,
                        "content_encoding": coding,
                        "server_compress_ms_p50": server_ms,
                        "bytes_on_wire": r.num_bytes_downloaded,
                        "decoded_bytes": len(r.content),
                        "inputs": len(r.json()["data"]),
                    }
                    | rep.latency.as_metrics("latency")
                )
    return rows


def measure_link(cfg: Config, runs: list[CodecRun], bodies: dict[str, bytes]) -> list[dict[str, Any]]:
    """Send each selected codec's compressed body over a real shaped link; measured vs modelled seconds."""
    c = cfg.compression
    chosen = [r for r in runs if r.codec.name in c.netns_codecs]
    rows = []
    for mbit in c.netns_mbit:
        send = [r for r in chosen if r.output_bytes * 8 / (mbit * 1e6) <= c.netns_max_transfer_s]
        skipped = [r for r in chosen if r not in send]
        with netlink.shaped_link(mbit) as link:
            seconds = netlink.transfer(link, [r.codec.compress(bodies[r.payload]) for r in send], timeout_s=120)
        for r, s in zip(send, seconds):
            model = r.output_bytes * 8 / (mbit * 1e6)
            rows.append({"payload": r.payload, "codec": r.codec.name, "link_mbit": mbit, "bytes_on_wire": r.output_bytes,
                         "measured_s": s, "modelled_s": model, "measured_over_modelled": s / model})  # fmt: skip
        rows += [{"payload": r.payload, "codec": r.codec.name, "link_mbit": mbit, "status": "skipped",
                  "reason": f"> {c.netns_max_transfer_s} s at this rate"} for r in skipped]  # fmt: skip
    return rows
