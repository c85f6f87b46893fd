"""The compression experiment: which codec and level carries OpenAI-shaped JSON fastest over which link.

For each payload (a batch of chat completions, real MiniLM embedding vectors as JSON numbers, a
long document; each at least `payload_kb`) and each codec and level, the stage measures the ratio
and the compress and decompress speed (warm-up, then repeats; median MB/s of the uncompressed
size, with the CV). A level is on the Pareto frontier when no other level both compresses
smaller and compresses faster. End to end, a body sent over a link of speed S costs
`compress + compressed bytes / S + decompress`; the fastest codec per speed answers "should I
compress at all, and how hard": on a slow link the ratio dominates, on a fast one the CPU.

Three checks keep the numbers honest: the codec speeds are timed again by a direct call of each
codec library and must agree within max(10%, 3x the CV); a real response (/v1/embeddings of many
inputs) is fetched from the REST server with each `Accept-Encoding`, so the wire bytes and the
latency come from the served path; and, where root allows, the compressed bodies are sent over a
real tc-shaped link between two network namespaces to compare the modelled transfer time with a
measured one. Claim C7 (Brotli 11 on JSON: -70% size for +5 ms decompression) is answered with
the measured size reduction, decompression time, and the compression cost the claim leaves out.
"""

from __future__ import annotations

import gzip
import json
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import brotli
import httpx
import pandas as pd
import psutil
import zstandard

from perfkit import measure, netlink, tracking
from perfkit.config import Config
from perfkit.models import Embedder
from perfkit.optim.compress import Codec, for_encoding, get
from perfkit.report import Check, claim_checks
from perfkit.serving import payloads
from perfkit.serving.encoding import LEVELS
from perfkit.workload import passages

CLAIMS = "data/claims.yaml"
# C7's checks in data/claims.yaml read the chat completions payload; its figures apply to every payload.
C7_SIZE_METRIC, C7_DECOMPRESS_METRIC = "summary.c7_chat_batch_size_reduction_pct", "summary.c7_chat_batch_decompress_ms"


def _json_bytes(obj: Any) -> bytes:
    # The separators Starlette's JSONResponse uses: the bytes a server actually sends.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def build_payloads(cfg: Config) -> dict[str, bytes]:
    """Each configured payload as the JSON body a server would send, at least `payload_kb` KiB, deterministic."""
    c = cfg.compression
    size = c.payload_kb * 1024
    corpus = cfg.resolve("data/corpus")
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
        spread = max(lat.cv, measure.cv(seconds))
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
    pool = passages(cfg.resolve("data/corpus"))
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


@dataclass
class CompressionResults:
    runs: list[CodecRun]
    checks: list[dict[str, Any]]
    link_mbit: tuple[float, ...]
    c7_checks: dict[str, Check]  # Brotli 11's size reduction and decompression time, from data/claims.yaml, by metric
    rest: list[dict[str, Any]] = field(default_factory=list)
    rest_skipped: str | None = None
    netns: list[dict[str, Any]] = field(default_factory=list)
    netns_skipped: str | None = None
    load_avg_1m: float = 0.0  # the machine's 1-minute load average when the codec timings ended

    def table(self) -> pd.DataFrame:
        t = pd.DataFrame([r.row() for r in self.runs])
        t["pareto"] = pareto(t)
        return t

    def end_to_end(self) -> pd.DataFrame:
        return end_to_end(self.runs, self.link_mbit)

    def fastest(self) -> pd.DataFrame:
        """The codec with the least modelled end-to-end time per payload and link speed, vs sending it plain."""
        e2e = self.end_to_end()
        best = e2e.loc[e2e.groupby(["payload", "link_mbit"]).total_s.idxmin()]
        plain = e2e[e2e.codec == "none"].set_index(["payload", "link_mbit"]).total_s
        best = best.assign(none_s=[plain[(p, m)] for p, m in zip(best.payload, best.link_mbit)])
        return best.assign(speedup=best.none_s / best.total_s).reset_index(drop=True)

    def _c7_claimed(self) -> tuple[float, float]:
        """C7's claimed size reduction (%) and decompression time (ms)."""
        return self.c7_checks[C7_SIZE_METRIC].claimed, self.c7_checks[C7_DECOMPRESS_METRIC].claimed

    def c7(self) -> dict[str, Any]:
        """Brotli 11 on each JSON payload: size reduction, decompression ms, and compression speed."""
        b11 = [r for r in self.runs if r.codec.name == "brotli-11"]
        if not b11:
            return {"c7_verdict": "not measurable here", "c7_reason": "brotli-11 not in compression.brotli_levels"}
        # Judged strictly, as this stage always has (the report applies the checks' tolerances).
        claimed_reduction, claimed_ms = self._c7_claimed()
        out: dict[str, Any] = {}
        holding = []
        for r in b11:
            reduction = 100 * (1 - r.output_bytes / r.input_bytes)
            out |= {
                f"c7_{r.payload}_size_reduction_pct": reduction,
                f"c7_{r.payload}_decompress_ms": r.decompress.p50,
                f"c7_{r.payload}_compress_ms": r.compress.p50,
                f"c7_{r.payload}_compress_mb_s": r.mb_s(r.compress),
            }
            if reduction >= claimed_reduction and r.decompress.p50 <= claimed_ms:
                holding.append(r.payload)
        out["c7_payload_kb"] = statistics.fmean(r.input_bytes for r in b11) / 1024
        out["c7_holds_on"] = ", ".join(holding) or "none"
        out["c7_verdict"] = "holds" if len(holding) == len(b11) else ("partly holds" if holding else "does not hold")
        return out

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in self.runs:
            row = r.row()
            out[f"{r.payload}/{r.codec.name}"] = {k: row[k] for k in ("ratio", "bytes_on_wire", "compress_mb_s",
                                                                       "decompress_mb_s", "compress_cv", "decompress_cv")}  # fmt: skip
        for row in self.rest:
            out[f"rest/{row['accept_encoding']}"] = {k: v for k, v in row.items() if k != "accept_encoding"}
        for check in self.checks:
            out[f"check/{check['payload']}/{check['codec']}"] = {k: v for k, v in check.items() if k not in ("payload", "codec")}
        for row in self.netns:
            out[f"netns/{row['link_mbit']:g}mbit/{row['payload']}/{row['codec']}"] = {
                k: v for k, v in row.items() if k not in ("payload", "codec", "link_mbit")
            }
        fastest = self.fastest()
        summary: dict[str, Any] = {
            f"fastest_{p}_{m:g}mbit": f"{c} ({s:.2f}x vs none)"
            for p, m, c, s in zip(fastest.payload, fastest.link_mbit, fastest.codec, fastest.speedup)
        }
        summary |= self.c7()
        agree = [c[f"{op}_agrees"] for c in self.checks for op in ("compress", "decompress")]
        summary["speed_check_agree_frac"] = sum(agree) / len(agree) if agree else float("nan")
        summary["load_avg_1m"] = self.load_avg_1m
        summary["cpu_count"] = psutil.cpu_count()
        summary["rest"] = self.rest_skipped or "measured"
        summary["netns"] = self.netns_skipped or "measured"
        if self.netns:
            measured = [r["measured_over_modelled"] for r in self.netns if "measured_s" in r]
            summary["netns_measured_over_modelled_median"] = statistics.median(measured) if measured else float("nan")
        out["summary"] = summary
        return out

    def conclusion(self) -> str:
        c7 = self.c7()
        lines = []
        b11 = [r for r in self.runs if r.codec.name == "brotli-11"]
        if b11:
            per = "; ".join(
                f"{r.payload} -{c7[f'c7_{r.payload}_size_reduction_pct']:.0f}% size, "
                f"{r.decompress.p50:.1f} ms to decompress, {r.compress.p50:.0f} ms to compress ({r.mb_s(r.compress):.2f} MB/s)"
                for r in b11
            )
            claimed_reduction, claimed_ms = self._c7_claimed()
            lines.append(
                f"C7 (Brotli 11 on JSON: -{claimed_reduction:g}% size for +{claimed_ms:g} ms decompression) "
                f"{c7['c7_verdict']} here "
                f"(holds on: {c7['c7_holds_on']}). On {c7['c7_payload_kb']:.0f} KiB bodies: {per}. The claim leaves out "
                "the compression cost, which a server pays on every response it does not cache."
            )
        else:
            lines.append(f"C7 is not measurable here: {c7['c7_reason']}.")
        fastest = self.fastest()
        for payload in fastest.payload.unique():
            f = fastest[fastest.payload == payload].sort_values("link_mbit")
            picks = ", ".join(f"{m:g} Mbit/s: {c} ({s:.1f}x)" for m, c, s in zip(f.link_mbit, f.codec, f.speedup))
            lines.append(f"Fastest end to end for {payload} (speed-up over sending it plain): {picks}.")
        if self.checks:
            bad = [
                f"{c['payload']} {c['codec']} {op} ({c[f'{op}_diff_pct']:.0f}% > {c[f'{op}_tolerance_pct']:.0f}%)"
                for c in self.checks
                for op in ("compress", "decompress")
                if not c[f"{op}_agrees"]
            ]
            cpus = psutil.cpu_count() or 1
            busy = (
                f"the 1-minute load average was {self.load_avg_1m:.1f} on {cpus} CPUs, so other processes competed for the cores"
                if self.load_avg_1m > cpus
                else f"the load average ({self.load_avg_1m:.1f} on {cpus} CPUs) does not explain it"
            )
            lines.append(
                "Codec speeds agree with direct library calls within max(10%, 3x CV)."
                if not bad
                else f"Codec speeds differ from direct library calls beyond max(10%, 3x CV) for {', '.join(bad)}; {busy}."
            )
        if self.rest:
            plain = next((r for r in self.rest if r["content_encoding"] == "identity"), None)
            for r in self.rest:
                if plain and r is not plain:
                    lines.append(
                        f"Through the REST server, Accept-Encoding {r['accept_encoding']} gave {r['content_encoding']}: "
                        f"{r['bytes_on_wire'] / 1024:.0f} KiB on the wire vs {plain['bytes_on_wire'] / 1024:.0f} KiB, "
                        f"latency p50 {r['latency_ms_p50']:.0f} ms vs {plain['latency_ms_p50']:.0f} ms "
                        f"(CV {r['latency_cv']:.2f} and {plain['latency_cv']:.2f}); compressing this body at the server's "
                        f"level takes {r['server_compress_ms_p50']:.1f} ms, so the rest of the difference is the "
                        "embedding computation varying from request to request."
                    )
        elif self.rest_skipped:
            lines.append(f"REST measurement skipped: {self.rest_skipped}.")
        if self.netns_skipped:
            lines.append(f"Namespace link skipped: {self.netns_skipped}.")
        elif self.netns:
            summary = self.metrics()["summary"]
            lines.append(
                "Over a real tc-shaped veth link the measured transfer took "
                f"{summary['netns_measured_over_modelled_median']:.2f}x the modelled bytes / rate (median); "
                "the model counts payload bytes only, while each 1448-byte TCP segment travels in a 1514-byte "
                "frame (x1.046), and it leaves out the handshake and slow start."
            )
        return "\n\n".join(lines)


def run(cfg: Config) -> CompressionResults:
    """Every codec and level on every payload, the speed check, the REST and namespace measurements."""
    c = cfg.compression
    c7_checks = claim_checks(cfg.resolve(CLAIMS), "C7")  # before minutes of timing: a missing file fails fast
    bodies = build_payloads(cfg)
    runs = [time_codec(cfg, name, body, codec) for name, body in bodies.items() for codec in codecs(cfg)]
    checks = [check_speed(r, bodies[r.payload], cfg) for r in runs if r.codec.name in c.check_codecs]
    results = CompressionResults(runs, checks, c.link_mbit, c7_checks, load_avg_1m=psutil.getloadavg()[0])
    for payload, body in bodies.items():  # one nested run per payload; its metrics are keyed `<codec>/<metric>`
        per_codec = {
            f"{r.codec.name}/{k}": v
            for r in runs
            if r.payload == payload
            for k, v in r.row().items()
            if k not in ("payload", "codec", "family", "level", "input_bytes")
        }
        tracking.log_variant(payload, per_codec, {"payload": payload, "input_bytes": len(body)})
    if c.rest:
        results.rest = measure_rest(cfg)
        for row in results.rest:
            tracking.log_variant(f"rest/{row['accept_encoding']}", row)
    else:
        results.rest_skipped = "compression.rest is false"
    reason = netlink.availability() if c.netns else "compression.netns is false"
    if reason is None:
        try:
            results.netns = measure_link(cfg, runs, bodies)
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:  # the link is a check, not the result
            results.netns_skipped = f"the namespace link failed: {exc}"
    else:
        results.netns_skipped = reason
    return results
