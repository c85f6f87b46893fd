"""Noisy neighbours and C8's token bucket: nine quiet clients, then a tenth sending ten times its share.

The quiet clients together send `quiet_share` of the measured capacity (open loop, Poisson, one
bearer key each); their latency alone is the reference. Then a burster joins at `burst_factor` x
one quiet client's rate, in three servers: FIFO queue with the default bucket (15 requests/s per
key, far above what one client can be served here, so it never binds), fair queueing with the
same bucket, and fair queueing with C8's bucket counted in generated tokens (15 tokens/s, burst
30), which refuses the burster's excess with 429 and Retry-After. Fair queueing runs as the server
is configured: with `serving.fair_share_window_s` > 0 (the default) each key also holds at most its
share of the batch slots (perfkit.serving.queueing), and the table's `queueing` says so. Judged: the
quiet clients' p99 against their undisturbed p99, the burster's 429s, and the server alive with flat
memory.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from perfkit.config import Config
from perfkit.hardware import ResourceSampler
from perfkit.load.runner import run_load
from perfkit.serving.launch import ServerHandle, launch
from perfkit.stages.operations import OperationsConfig
from perfkit.stages.operations.common import Percentiles, measured, server_overrides

QUIET, BURST = "perfkit-quiet", "perfkit-burst"


@dataclass(frozen=True)
class NeighbourRun:
    variant: str  # alone | fifo | fair | fair+bucket
    queueing: str
    bucket: str
    quiet: Percentiles | None  # E2E of the quiet clients' answered requests
    quiet_ttft: Percentiles | None
    quiet_requests: int
    quiet_errors: int
    burst_sent: int
    burst_ok: int
    burst_429: int
    burst_503: int
    burst_429_with_retry_after: int
    alive: bool
    rss_mb_idle: float
    rss_mb_peak: float

    @classmethod
    def empty(cls, variant: str) -> NeighbourRun:
        return cls(variant, "", "", None, None, 0, 0, 0, 0, 0, 0, 0, True, 0.0, 0.0)

    def row(self) -> dict[str, Any]:
        q, t = self.quiet, self.quiet_ttft
        return {
            "variant": self.variant, "queueing": self.queueing, "bucket": self.bucket,
            "quiet_p50_ms": q.p50_ms if q else None, "quiet_p99_ms": q.p99_ms if q else None,
            "quiet_p99_ci_low_ms": q.p99_ci_low_ms if q else None, "quiet_p99_ci_high_ms": q.p99_ci_high_ms if q else None,
            "quiet_ttft_p99_ms": t.p99_ms if t else None, "quiet_requests": self.quiet_requests,
            "quiet_errors": self.quiet_errors, "burst_sent": self.burst_sent, "burst_ok": self.burst_ok,
            "burst_429": self.burst_429, "burst_503": self.burst_503,
            "burst_429_with_retry_after": self.burst_429_with_retry_after, "alive": self.alive,
            "rss_mb_idle": self.rss_mb_idle, "rss_mb_peak": self.rss_mb_peak,
        }


VARIANTS: tuple[tuple[str, str, str, bool], ...] = (  # name, fair_queueing, bucket unit, burster
    ("alone", "off", "requests", False),
    ("fifo", "off", "requests", True),
    ("fair", "requests", "requests", True),
    ("fair+bucket", "requests", "tokens", True),
)


def _variant(cfg: Config, ops: OperationsConfig, prompts: list[Any], folder: Path, capacity: float,
             default: ServerHandle, name: str, fair: str, unit: str, burster: bool) -> NeighbourRun:
    rate = cfg.serving.rate_limit
    bucket = {"enabled": True, "unit": unit, "tokens_per_second": ops.bucket_rate if unit == "tokens" else rate.tokens_per_second,
              "burst": ops.bucket_burst if unit == "tokens" else rate.burst}
    overrides = server_overrides(ops, **{"serving.fair_queueing": fair, "serving.rate_limit": bucket})
    window = cfg.serving.fair_share_window_s
    queueing = f"{fair}, slot share over {window:g} s" if fair != "off" and window > 0 else fair
    quiet_rate = ops.quiet_share * capacity
    duration = ops.quiet_requests / quiet_rate
    # FIFO with the default bucket is the server the stage already runs; the others start their own.
    own = fair != "off" or unit != "requests"
    starting = launch(cfg, overrides=overrides, probe_cold_start=False) if own else nullcontext(default)
    with starting as server, ResourceSampler(server.pid, cfg.hardware.sample_interval_s) as sampler:
        idle = _rss_mb(server.pid)
        with ThreadPoolExecutor(2) as pool:
            quiet = pool.submit(run_load, cfg, server.base_url, prompts, folder / f"{name}-quiet", mode="open",
                                rate_rps=quiet_rate, users=ops.quiet_clients, requests=ops.quiet_requests,
                                warmup_requests=0, duration_s=duration * 3 + 30, key_prefix=QUIET)
            burst = None
            if burster:
                burst_rate = ops.burst_factor * quiet_rate / ops.quiet_clients
                burst = pool.submit(run_load, cfg, server.base_url, prompts, folder / f"{name}-burst", mode="open",
                                    rate_rps=burst_rate, users=1, requests=math.ceil(burst_rate * duration),
                                    warmup_requests=0, duration_s=duration * 3 + 30, key_prefix=BURST)
            quiet_rows = measured(quiet.result().timings)
            burst_rows = measured(burst.result().timings) if burst else []
        alive = httpx.get(server.base_url + "/health", timeout=10).status_code == 200
        peak = sampler.usage.peak_rss_mb
    ok = [r for r in quiet_rows if r.ok]
    refused = [r for r in burst_rows if r.status == 429]
    return NeighbourRun(
        name, queueing, f"{bucket['tokens_per_second']:g} {unit}/s, burst {bucket['burst']}",
        Percentiles.of([r.e2e_s for r in ok]), Percentiles.of([r.ttft_s for r in ok if r.ttft_s is not None]),
        len(quiet_rows), len(quiet_rows) - len(ok), len(burst_rows), sum(r.ok for r in burst_rows), len(refused),
        sum(1 for r in burst_rows if r.status == 503), sum(1 for r in refused if r.retry_after_s), alive, idle, peak,
    )


def _rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (proc, *proc.children(recursive=True))) / 2**20


def run_neighbours(
    cfg: Config, ops: OperationsConfig, server: ServerHandle, prompts: list[Any], folder: Path, capacity: float
) -> list[NeighbourRun]:
    """Every variant; `server` (FIFO, default bucket, capacity measured) runs the first two."""
    return [_variant(cfg, ops, prompts, folder, capacity, server, *v) for v in VARIANTS]
