"""What the live experiments share: the server they start, its measured capacity, per-key summaries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perfkit.config import Config
from perfkit.endpoints.base import Endpoint
from perfkit.errors import PerfkitError
from perfkit.load.results import RequestTiming
from perfkit.load.runner import run_load
from perfkit.stages.operations import OperationsConfig
from perfkit.stats import bootstrap_ci, bootstrap_ratio


def server_overrides(ops: OperationsConfig, **extra: Any) -> dict[str, Any]:
    """The batched server every live experiment runs, plus `extra` (dotted params keys)."""
    return {"serving.scheduler": ops.scheduler, "serving.max_batch_size": ops.max_batch_size, **extra}


def measure_capacity(cfg: Config, ops: OperationsConfig, endpoint: Endpoint, prompts: Sequence[Any], folder: Path) -> float:
    """Requests/s the server sustains: a closed loop of `capacity_users` users (more than it batches at once)."""
    run = run_load(
        cfg,
        endpoint,
        prompts,
        folder,
        mode="closed",
        users=ops.capacity_users,
        requests=ops.capacity_requests,
        warmup_requests=ops.capacity_users,
    )
    if run.summary.ok_requests == 0 or run.summary.throughput_rps <= 0:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(run.summary.errors_by_code.items()))
        raise PerfkitError(f"capacity measurement: no request was answered ({codes}); the server is refusing or stalled")
    return run.summary.throughput_rps


@dataclass(frozen=True)
class Percentiles:
    """p50, p90 and p99 of a set of latencies (ms), with a bootstrap 95% interval of the p99, and the latencies
    themselves (intervals on one variant's percentile over another's)."""

    count: int
    p50_ms: float
    p99_ms: float
    p99_ci_low_ms: float
    p99_ci_high_ms: float
    max_ms: float = float("nan")
    p90_ms: float = float("nan")
    samples_ms: tuple[float, ...] = ()

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Percentiles | None:
        if not seconds:
            return None
        ms = np.asarray(seconds, dtype=float) * 1000
        lo, hi = bootstrap_ci(ms, stat=lambda a: float(np.percentile(a, 99)), n=1000)
        return cls(
            len(ms),
            float(np.percentile(ms, 50)),
            float(np.percentile(ms, 99)),
            lo,
            hi,
            float(ms.max()),
            float(np.percentile(ms, 90)),
            tuple(float(v) for v in ms),
        )

    def over(self, other: Percentiles, q: int) -> tuple[float, float | None, float | None]:
        """This percentile `q` (50, 90 or 99) over `other`'s, with a bootstrap interval where both kept their samples."""
        if self.samples_ms and other.samples_ms:
            return bootstrap_ratio(self.samples_ms, other.samples_ms, stat=lambda a: float(np.percentile(a, q)))
        pick = {50: lambda p: p.p50_ms, 90: lambda p: p.p90_ms, 99: lambda p: p.p99_ms}[q]
        return pick(self) / pick(other), None, None

    @property
    def reliable(self) -> bool:
        return self.count >= 100

    @property
    def bound_ms(self) -> float:
        """The p99 from >= 100 samples, else the max: a tail figure that can be judged either way (max >= p99)."""
        return self.p99_ms if self.reliable else self.max_ms


def measured(rows: Sequence[RequestTiming], key_prefix: str | None = None) -> list[RequestTiming]:
    """The measured (non-warm-up) rows, of the keys starting with `key_prefix` if given."""
    return [r for r in rows if not r.warmup and (key_prefix is None or r.key.startswith(key_prefix))]
