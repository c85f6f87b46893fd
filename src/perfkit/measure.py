"""Turning repeated runs into trustworthy numbers.

Rules (docs/design.md §2): warm up first (the first calls pay for allocation, lazy init and cold
caches); then repeat until both a minimum count and a minimum duration are met, within a time cap
that a capped variant reports rather than hides; report distributions (mean, p50, p90, p95, p99,
stdev, CV), never one number; flag a CV above the noise threshold. A percentile from few samples
is weak: p99 of 30 samples is the second largest, so `Latency.p99_reliable` says when n < 100.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

from perfkit.hardware import now
from perfkit.stats import cv, mean_ci

T = TypeVar("T")


# A p99 is reported from this many samples on: from 299 the largest of them exceeds the true p99 with 95%
# probability (1 - 0.99**299 > 0.95), so the maximum bounds it; below, the maximum and the count are reported
# instead, never a "p99" that is the largest or second largest value.
P99_MIN_SAMPLES = 299


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
        return self.count >= P99_MIN_SAMPLES

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """`{prefix}_ms_mean`, `{prefix}_ms_p50`, ... and `{prefix}_cv`, the names docs/design.md §3 uses.

        A p99 from fewer than `P99_MIN_SAMPLES` samples is left out; the maximum and the count stand for it.
        """
        out = {f"{prefix}_ms_{k}": v for k, v in asdict(self).items() if k != "count" and (k != "p99" or self.p99_reliable)}
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


def warm_up(fn: Callable[[], object], count: int, seconds: float = 0.0) -> int:
    """Call `fn` untimed at least `count` times and until `seconds` have passed; returns the calls made.

    A count alone suits a CPU; a GPU idles at a fraction of its clock (345 MHz against 1,980 under load on an
    H200) and needs load for a while, not for a number of calls, before its timings settle.
    """
    calls, started = 0, time.perf_counter()
    while calls < count or time.perf_counter() - started < seconds:
        fn()
        calls += 1
    return calls


def repeat(
    fn: Callable[[], object],
    *,
    warmup: int,
    min_repeats: int,
    min_duration_s: float = 0.0,
    max_duration_s: float = float("inf"),
    device: object = None,
    warmup_s: float = 0.0,
) -> Repeats:
    """Warm up (`warm_up(fn, warmup, warmup_s)`), then time `fn` until `min_repeats` and `min_duration_s` are both met.

    Stops early, with `capped=True`, once `max_duration_s` has passed (warm-up included) and at
    least one timed repeat exists.
    """
    started = time.perf_counter()
    warmed = warm_up(fn, warmup, warmup_s)
    seconds: list[float] = []
    timed_from = time.perf_counter()
    while True:
        t0 = now(device)
        fn()
        seconds.append(now(device) - t0)
        elapsed = time.perf_counter() - timed_from
        if len(seconds) >= min_repeats and elapsed >= min_duration_s:
            return Repeats(tuple(seconds), warmed, capped=False)
        if time.perf_counter() - started >= max_duration_s:
            return Repeats(tuple(seconds), warmed, capped=True)


def clock_read_cost_s(reads: int = 10_000, device: object = None) -> float:
    """Seconds one `hardware.now` call costs: multiplied by the reads a run made, the harness's own overhead."""
    t0 = time.perf_counter()
    for _ in range(reads):
        now(device)
    return (time.perf_counter() - t0) / reads


def littles_law_max_qps(users: int, mean_latency_s: float) -> float:
    """With `users` closed-loop users and this mean latency, throughput cannot exceed users / latency."""
    return users / mean_latency_s if mean_latency_s > 0 else float("inf")


# ---------------------------------------------------------------------------------------------------
# Spread between runs: independent rounds, variants interleaved round-robin.
#
# Within one run, repeats share the process, its caches and the machine's state of the moment, so their
# CV understates how much a figure moves from run to run (two runs 11 minutes apart differed by 5-10%
# while their within-run CVs said 0.3-3%). A headline figure therefore comes from `rounds` independent
# rounds, each with its own warm-up, variants interleaved ABCABC... so that drift hits all alike; its
# interval is the t interval over the round means (with 3 rounds a percentile bootstrap covers ~75%, not
# 95%: `stats.mean_ci` uses it only from `stats.BOOTSTRAP_MIN` samples up), and a ratio's interval comes from the per-round
# paired ratios, which cancels what drifted between rounds.


def interval_text(
    value: float, low: float | None = None, high: float | None = None, fmt: str = ".2f", unit: str = "", alone: str = ""
) -> str:
    """The one way to write a figure and its 95% interval: "2.73x (95% CI 1.53–3.94x)", signed "+12% (95% CI -3% to +27%)"."""
    if low is None or high is None:  # the figure and `alone`, e.g. " (one round)"
        return f"{value:{fmt}}{unit}{alone}"
    between = f"{low:{fmt}}{unit} to {high:{fmt}}{unit}" if fmt.startswith("+") else f"{low:{fmt}}–{high:{fmt}}{unit}"
    return f"{value:{fmt}}{unit} (95% CI {between})"


def summary_text(summary: Mapping[str, Any], key: str, fmt: str = ".2f", unit: str = "") -> str:
    """`interval_text` of a summary's `key` and its `key_ci_low` / `key_ci_high` (the shape `Spread.summary` writes);
    "not measured" where the summary has no `key`."""
    if key not in summary:
        return "not measured"
    return interval_text(summary[key], summary.get(f"{key}_ci_low"), summary.get(f"{key}_ci_high"), fmt, unit)


@dataclass(frozen=True)
class Spread:
    """A headline figure measured in independent rounds: one value per round, and how noisy each round was.

    `cv_within` is the mean within-round CV of the repeats behind each round value (0 when a round is
    one observation); `samples` the timed observations behind all rounds together.
    """

    values: tuple[float, ...]
    cv_within: float = 0.0
    samples: int = 0

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("a spread needs at least one round")

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def ci(self) -> tuple[float, float] | None:
        return mean_ci(self.values)

    @property
    def cv_between(self) -> float:
        return cv(self.values)

    @property
    def cv(self) -> float:
        """The larger of the within-round and between-round CVs: the one a noise flag looks at."""
        return max(self.cv_within, self.cv_between)

    def flags(self, noisy_cv: float, min_repeats: int) -> tuple[str, ...]:
        """`noisy` when the CV passes `noisy_cv`; `few samples` under `min_repeats` observations."""
        out = []
        if self.cv > noisy_cv:
            out.append(f"noisy (CV {self.cv:.0%})")
        if max(self.samples, self.n) < min_repeats:
            out.append(f"few samples (n={max(self.samples, self.n)})")
        return tuple(out)

    def summary(self, key: str) -> dict[str, float]:
        """`{key: mean, key_ci_low, key_ci_high}`: the shape perfkit.claims judges intervals from."""
        out = {key: self.mean}
        if self.ci is not None:
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = self.ci
        return out

    def columns(self, key: str, noisy_cv: float, min_repeats: int) -> dict[str, Any]:
        """Table columns: the value, its interval, n (rounds), samples, CV and the noise flags."""
        low, high = self.ci if self.ci is not None else (float("nan"), float("nan"))
        return {
            key: self.mean,
            f"{key}_ci_low": low,
            f"{key}_ci_high": high,
            f"{key}_rounds": self.n,
            f"{key}_samples": self.samples,
            f"{key}_cv": self.cv,
            f"{key}_flags": "; ".join(self.flags(noisy_cv, min_repeats)),
        }

    def at_least(self, threshold: float) -> bool | None:
        """True when the whole interval is at or above `threshold`, False when it is wholly below, None when it
        straddles it; a single round is judged as it stands."""
        low, high = self.ci if self.ci is not None else (self.mean, self.mean)
        return True if low >= threshold else False if high < threshold else None

    def text(self, fmt: str = ".2f", unit: str = "", alone: str = "") -> str:
        low, high = self.ci if self.ci is not None else (None, None)  # the round mean with its interval
        return interval_text(self.mean, low, high, fmt, unit, alone)

    def scaled(self, factor: float) -> Spread:
        return Spread(tuple(v * factor for v in self.values), self.cv_within, self.samples)

    def map(self, fn: Callable[[float], float]) -> Spread:
        """Each round's value through `fn` (e.g. seconds -> tokens/s); the within-round CV is kept as an approximation."""
        return Spread(tuple(fn(v) for v in self.values), self.cv_within, self.samples)


def ratio(num: Spread, den: Spread) -> Spread:
    """Per-round paired ratios num/den (rounds paired by index): what drifted between rounds cancels."""
    if num.n != den.n:
        raise ValueError(f"paired ratio needs the same rounds: {num.n} vs {den.n}")
    if any(d == 0 for d in den.values):
        raise ValueError("paired ratio over a zero")
    within = math.sqrt(num.cv_within**2 + den.cv_within**2)
    return Spread(tuple(a / b for a, b in zip(num.values, den.values)), within, min(num.samples, den.samples))


def interleaved(variants: Mapping[str, Callable[[int], T]], rounds: int) -> dict[str, list[T]]:
    """Call every variant once per round, round-robin (ABCABC...): `fn(round_index)`, which does its own warm-up."""
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    out: dict[str, list[T]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, fn in variants.items():
            out[name].append(fn(r))
    return out


def timed_rounds(
    variants: Mapping[str, Callable[[], object]],
    rounds: int,
    *,
    warmup: int,
    min_repeats: int,
    min_duration_s: float = 0.0,
    max_duration_s: float = float("inf"),
    device: object = None,
) -> dict[str, Spread]:
    """Seconds per call of each variant: `repeat` once per round (its own warm-up), variants interleaved."""
    runs = interleaved(
        {
            name: (
                lambda _r, fn=fn: repeat(
                    fn, warmup=warmup, min_repeats=min_repeats, min_duration_s=min_duration_s, max_duration_s=max_duration_s, device=device
                )
            )
            for name, fn in variants.items()
        },
        rounds,
    )
    return {name: spread_of(reps) for name, reps in runs.items()}


def spread_of(runs: Sequence[Repeats]) -> Spread:
    """Rounds of `repeat` -> their mean seconds per call as a Spread."""
    means = tuple(statistics.fmean(r.seconds) for r in runs)
    return Spread(means, statistics.fmean(cv(r.seconds) for r in runs), sum(len(r.seconds) for r in runs))


def noise_sentence(figures: Mapping[str, Spread], noisy_cv: float, min_repeats: int) -> str:
    """One sentence naming every figure the noise rule flags (noisy, few samples), or "" when none is."""
    flagged = [f"{name} ({'; '.join(flags)})" for name, spread in figures.items() if (flags := spread.flags(noisy_cv, min_repeats))]
    if not flagged:
        return ""
    return (
        f"Flagged by the noise rule (CV above {noisy_cv:.0%}, or fewer than {min_repeats} samples): "
        + ", ".join(flagged)
        + "; read these figures with their intervals, not as points."
    )
