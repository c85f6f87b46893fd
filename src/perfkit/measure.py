"""Turning repeated runs into trustworthy numbers.

Rules (DESIGN.md §4): warm up first (the first calls pay for allocation, lazy init and cold
caches); then repeat until both a minimum count and a minimum duration are met, within a time cap
that a capped variant reports rather than hides; report distributions (mean, p50, p90, p95, p99,
stdev, CV), never one number; flag a CV above the noise threshold. A percentile from few samples
is weak: p99 of 30 samples is the second largest, so `Latency.p99_reliable` says when n < 100.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from perfkit.hardware import now


@dataclass(frozen=True)
class Latency:
    """A latency distribution in milliseconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    stdev: float
    min: float
    max: float

    @classmethod
    def from_samples(cls, seconds: Sequence[float]) -> Latency:
        if len(seconds) == 0:
            raise ValueError("no samples")
        ms = np.asarray(seconds, dtype=float) * 1000.0
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
        return cls(
            count=len(ms),
            mean=float(ms.mean()),
            p50=float(p50),
            p90=float(p90),
            p95=float(p95),
            p99=float(p99),
            stdev=float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
            min=float(ms.min()),
            max=float(ms.max()),
        )

    @property
    def cv(self) -> float:
        """Coefficient of variation: stdev / mean (0 for a single sample)."""
        return self.stdev / self.mean if self.mean else 0.0

    @property
    def p99_reliable(self) -> bool:
        return self.count >= 100

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """`{prefix}_ms_mean`, `{prefix}_ms_p50`, ... and `{prefix}_cv`, the names DESIGN.md §5 uses."""
        out = {f"{prefix}_ms_{k}": v for k, v in asdict(self).items() if k != "count"}
        out[f"{prefix}_count"] = float(self.count)
        out[f"{prefix}_cv"] = self.cv
        return out


@dataclass(frozen=True)
class Repeats:
    """Wall-clock seconds of each timed repeat, and whether the time cap cut the run short."""

    seconds: tuple[float, ...]
    warmup: int
    capped: bool

    @property
    def latency(self) -> Latency:
        return Latency.from_samples(self.seconds)


def repeat(
    fn: Callable[[], object],
    *,
    warmup: int,
    min_repeats: int,
    min_duration_s: float = 0.0,
    max_duration_s: float = float("inf"),
    device: object = None,
) -> Repeats:
    """Call `fn` `warmup` times untimed, then time it until `min_repeats` and `min_duration_s` are both met.

    Stops early, with `capped=True`, once `max_duration_s` has passed (warm-up included) and at
    least one timed repeat exists.
    """
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
    seconds: list[float] = []
    timed_from = time.perf_counter()
    while True:
        t0 = now(device)
        fn()
        seconds.append(now(device) - t0)
        elapsed = time.perf_counter() - timed_from
        if len(seconds) >= min_repeats and elapsed >= min_duration_s:
            return Repeats(tuple(seconds), warmup, capped=False)
        if time.perf_counter() - started >= max_duration_s:
            return Repeats(tuple(seconds), warmup, capped=True)


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation of a sample (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean else 0.0


def bootstrap_ci(
    values: Sequence[float], stat: Callable[[np.ndarray], float] = np.median, level: float = 0.95, n: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of `stat` over `values`."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    stats = np.array([stat(rng.choice(data, size=len(data), replace=True)) for _ in range(n)])
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_paired(
    columns: Sequence[np.ndarray],
    stat: Callable[..., np.ndarray],
    level: float = 0.95,
    n: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """`stat` of paired samples with a percentile-bootstrap interval: (value, low, high).

    The columns are measurements of the same items (e.g. one per held-out token, for two models);
    each resample draws items, keeping their columns together, so an interval on a ratio or a
    difference of two models' means reflects their shared items. `stat` receives the columns as
    arrays of shape (resamples, items) and returns one value per resample (e.g. `lambda s, t:
    s.mean(1) / t.mean(1)`).
    """
    data = [np.asarray(c, dtype=float) for c in columns]
    size = len(data[0])
    if size == 0 or any(len(c) != size for c in data):
        raise ValueError("bootstrap_paired: columns must be non-empty and of equal length")
    value = float(stat(*(c[None, :] for c in data))[0])
    rng = np.random.default_rng(seed)
    stats = []
    for chunk in range(0, n, 250):  # bounded memory: 250 resamples of every item at a time
        idx = rng.integers(0, size, size=(min(250, n - chunk), size))
        stats.append(np.asarray(stat(*(c[idx] for c in data)), dtype=float))
    alpha = (1.0 - level) / 2
    lo, hi = np.nanquantile(np.concatenate(stats), [alpha, 1.0 - alpha])
    return value, float(lo), float(hi)


# Two-sided 95% critical values of Student's t by degrees of freedom (1..30); past 30, 1.96 is within 5%.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its 95% t-interval over independent rounds: (mean, low, high); nan bounds below two rounds."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    df = len(values) - 1
    half = (_T95[df - 1] if df <= len(_T95) else 1.96) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def clock_read_cost_s(reads: int = 10_000, device: object = None) -> float:
    """Seconds one `hardware.now` call costs: multiplied by the reads a run made, the harness's own overhead."""
    t0 = time.perf_counter()
    for _ in range(reads):
        now(device)
    return (time.perf_counter() - t0) / reads


def littles_law_max_qps(users: int, mean_latency_s: float) -> float:
    """With `users` closed-loop users and this mean latency, throughput cannot exceed users / latency."""
    return users / mean_latency_s if mean_latency_s > 0 else float("inf")
