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

The two variants C8 is judged on, alone and fair + bucket, run `neighbour_rounds` interleaved rounds
of `quiet_requests` each (alone, fair + bucket, alone, ...); their p99s are pooled over the rounds
(a p99 from >= 100 requests) and the ratio's interval is a bootstrap over both pools. FIFO and fair
without the claim's bucket run once, in the first round, as context, with `context_requests`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    round: int = 0

    @classmethod
    def empty(cls, variant: str) -> NeighbourRun:
        return cls(variant, "", "", None, None, 0, 0, 0, 0, 0, 0, 0, True, 0.0, 0.0)

    def row(self) -> dict[str, Any]:
        q, t = self.quiet, self.quiet_ttft
        return {
            "variant": self.variant,
            "round": self.round,
            "queueing": self.queueing,
            "bucket": self.bucket,
            "quiet_p50_ms": q.p50_ms if q else None,
            "quiet_p99_ms": q.p99_ms if q else None,
            "quiet_p99_ci_low_ms": q.p99_ci_low_ms if q else None,
            "quiet_p99_ci_high_ms": q.p99_ci_high_ms if q else None,
            "quiet_ttft_p99_ms": t.p99_ms if t else None,
            "quiet_requests": self.quiet_requests,
            "quiet_errors": self.quiet_errors,
            "burst_sent": self.burst_sent,
            "burst_ok": self.burst_ok,
            "burst_429": self.burst_429,
            "burst_503": self.burst_503,
            "burst_429_with_retry_after": self.burst_429_with_retry_after,
            "alive": self.alive,
            "rss_mb_idle": self.rss_mb_idle,
            "rss_mb_peak": self.rss_mb_peak,
        }


VARIANTS: tuple[tuple[str, str, str, bool], ...] = (  # name, fair_queueing, bucket unit, burster
    ("alone", "off", "requests", False),
    ("fifo", "off", "requests", True),
    ("fair", "requests", "requests", True),
    ("fair+bucket", "requests", "tokens", True),
)
JUDGED = ("alone", "fair+bucket")  # C8's pair: run in every round; the others once, as context


def _variant(
    cfg: Config,
    ops: OperationsConfig,
    prompts: list[Any],
    folder: Path,
    capacity: float,
    default: ServerHandle,
    round_index: int,
    name: str,
    fair: str,
    unit: str,
    burster: bool,
) -> NeighbourRun:
    rate = cfg.serving.rate_limit
    bucket = {
        "enabled": True,
        "unit": unit,
        "tokens_per_second": ops.bucket_rate if unit == "tokens" else rate.tokens_per_second,
        "burst": ops.bucket_burst if unit == "tokens" else rate.burst,
    }
    overrides = server_overrides(ops, **{"serving.fair_queueing": fair, "serving.rate_limit": bucket})
    window = cfg.serving.fair_share_window_s
    queueing = f"{fair}, slot share over {window:g} s" if fair != "off" and window > 0 else fair
    quiet_rate = ops.quiet_share * capacity
    quiet_requests = ops.quiet_requests if name in JUDGED else ops.context_requests
    duration = quiet_requests / quiet_rate
    # FIFO with the default bucket is the server the stage already runs; the others start their own.
    own = fair != "off" or unit != "requests"
    starting = launch(cfg, overrides=overrides, probe_cold_start=False) if own else nullcontext(default)
    folder = folder / f"round{round_index}"
    with starting as server, ResourceSampler(server.pid, cfg.hardware.sample_interval_s) as sampler:
        idle = _rss_mb(server.pid)
        with ThreadPoolExecutor(2) as pool:
            quiet = pool.submit(
                run_load,
                cfg,
                server,
                prompts,
                folder / f"{name}-quiet",
                mode="open",
                rate_rps=quiet_rate,
                users=ops.quiet_clients,
                requests=quiet_requests,
                warmup_requests=0,
                duration_s=duration * 3 + 30,
                key_prefix=QUIET,
            )
            burst = None
            if burster:
                burst_rate = ops.burst_factor * quiet_rate / ops.quiet_clients
                burst = pool.submit(
                    run_load,
                    cfg,
                    server,
                    prompts,
                    folder / f"{name}-burst",
                    mode="open",
                    rate_rps=burst_rate,
                    users=1,
                    requests=math.ceil(burst_rate * duration),
                    warmup_requests=0,
                    duration_s=duration * 3 + 30,
                    key_prefix=BURST,
                )
            quiet_rows = measured(quiet.result().timings)
            burst_rows = measured(burst.result().timings) if burst else []
        alive = httpx.get(server.base_url + "/health", timeout=10).status_code == 200
        peak = sampler.usage.peak_rss_mb
    ok = [r for r in quiet_rows if r.ok]
    refused = [r for r in burst_rows if r.status == 429]
    return NeighbourRun(
        name,
        queueing,
        f"{bucket['tokens_per_second']:g} {unit}/s, burst {bucket['burst']}",
        Percentiles.of([r.e2e_s for r in ok]),
        Percentiles.of([r.ttft_s for r in ok if r.ttft_s is not None]),
        len(quiet_rows),
        len(quiet_rows) - len(ok),
        len(burst_rows),
        sum(r.ok for r in burst_rows),
        len(refused),
        sum(1 for r in burst_rows if r.status == 503),
        sum(1 for r in refused if r.retry_after_s),
        alive,
        idle,
        peak,
        round_index,
    )


def _rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (proc, *proc.children(recursive=True))) / 2**20


def run_neighbours(
    cfg: Config, ops: OperationsConfig, server: ServerHandle, prompts: list[Any], folder: Path, capacity: float
) -> list[NeighbourRun]:
    """Every variant in the first round, C8's pair in every round; `server` (FIFO, default bucket) runs alone and FIFO."""
    return [
        _variant(cfg, ops, prompts, folder, capacity, server, r, *v)
        for r in range(ops.neighbour_rounds)
        for v in VARIANTS
        if r == 0 or v[0] in JUDGED
    ]


def pooled(runs: Sequence[NeighbourRun], variant: str) -> Percentiles | None:
    """A variant's quiet E2E latencies over every round it ran, as one distribution (one round: its own)."""
    quiets = [n.quiet for n in runs if n.variant == variant and n.quiet is not None]
    if len(quiets) == 1:
        return quiets[0]
    return Percentiles.of([ms / 1000 for q in quiets for ms in q.samples_ms])


def neighbour_summary(runs: Sequence[NeighbourRun], rss_flat: float) -> dict[str, Any]:
    """The quiet clients' pooled p99 per variant and over alone's (C8's pair with a bootstrap interval), the
    burster's refusals under the claim's bucket, and whether the server survived with flat memory."""
    if not runs:
        return {}
    out: dict[str, Any] = {"neighbour_rounds": max(n.round for n in runs) + 1}
    alone = pooled(runs, "alone")
    for variant in dict.fromkeys(n.variant for n in runs):
        quiet = pooled(runs, variant)
        if quiet is None:
            continue
        key = variant.replace("+", "_")
        out |= {f"quiet_p99_ms_{key}": quiet.p99_ms, f"quiet_requests_{key}": quiet.count, f"quiet_p99_reliable_{key}": quiet.reliable}
        if alone is not None and variant != "alone":
            value, low, high = quiet.over(alone, 99)
            out[f"quiet_p99_vs_alone_{key}"] = value
            if low is not None and high is not None:
                out |= {f"quiet_p99_vs_alone_{key}_ci_low": low, f"quiet_p99_vs_alone_{key}_ci_high": high}
    out["quiet_p99_reliable"] = all(out.get(f"quiet_p99_reliable_{v.replace('+', '_')}", False) for v in JUDGED)
    limited = [n for n in runs if n.variant == "fair+bucket"]
    if limited:
        out["burst_429"] = sum(n.burst_429 for n in limited)
        out["burst_429_with_retry_after"] = sum(n.burst_429_with_retry_after for n in limited)
    flat = all(n.rss_mb_peak <= rss_flat * n.rss_mb_idle for n in runs)
    out["neighbours_memory_flat"] = flat
    out["burst_survived"] = (
        all(n.alive for n in runs)
        and flat
        and bool(limited)
        and out["burst_429"] > 0
        and out["burst_429_with_retry_after"] == out["burst_429"]
    )
    return out
