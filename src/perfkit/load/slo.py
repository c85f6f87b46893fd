"""Capacity at a latency SLO (goodput): the highest request rate at which the tail latencies still hold.

An open-loop load (Poisson arrivals at a fixed rate, latency counted from each request's scheduled
send time) is offered at increasing rates. Below the server's capacity its queue stays short and
the p99 time to first token (TTFT) and time per output token (TPOT) stay within their objectives;
past it the queue grows for as long as the run lasts, TTFT climbs with it, and the server's queue
bound starts answering 503. A point passes when its p99 TTFT is within `slo.ttft_p99_ms`, its p99
TPOT within `slo.tpot_p99_ms`, and at most `slo.max_error_rate` of the requests it sent failed:
503s, other errors, truncated answers and requests never answered before the point's time limit
all count. Fewer than 299 answered requests (`measure.P99_MIN_SAMPLES`) do not bound a p99 (from 299
on, their maximum exceeds it with 95% probability): such a point judges its maximum instead, which is
stricter, and says so.

The search is bounded: from a starting rate of `slo.rates` (the lowest, or one near a rate the
server is known to answer: `start_index`) it walks upward until the first rate that fails, or, when
the first point fails, downward until the first that passes; then it bisects (geometric midpoints)
between the highest passing and the lowest failing rate for `bisect_points` more points, never
more than `max_points` in all. A stack's ceiling bounds the walk up: an estimate, from a closed loop
that kept the server saturated (never idle, every batch full), of the most requests/s it completes.
An open-loop rate above what a server completes saturated grows its queue for as long as it lasts, so it
is no capacity, and a short point there that passes (its queue not yet long enough to break the SLO)
would be a false pass. The walk stops at the last rate below the ceiling, the ceiling stands in for the
first failing rate, unmeasured, and the bisection runs between the highest passing rate and it. A pass
measured at or above the ceiling (a search that started there) overrules the estimate: the walk goes
on as without one. The capacity is the highest passing rate measured; the true one lies between it
and the first failing rate. "Below the lowest rate tried"
(nothing passed) and "at least the highest rate tried" (nothing failed) are results too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perfkit.load.results import LoadSummary
from perfkit.objectives import SloConfig

if TYPE_CHECKING:
    from perfkit.load.runner import LoadRun

BRACKETED = "between the highest passing and the first failing rate"
BELOW = "below the lowest rate tried"
AT_LEAST = "at least the highest rate tried"
P99, MAX = "p99", "max"


@dataclass(frozen=True)
class RatePoint:
    """One offered rate, judged against the SLO: the tail figures (p99, or max under 299 answers) and the failures."""

    rate_rps: float
    sent: int  # measured requests the point asked for
    ok: int
    http_503: int
    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float | None
    stat: str  # "p99" | "max": what ttft_ms, tpot_ms and e2e_ms are
    achieved_rps: float
    passed: bool
    why: str  # what broke the SLO; "" when it held
    flags: tuple[str, ...] = ()  # the load generator's own warnings (schedule lag, a busy client, the time limit)
    goodput_pct: float | None = None  # of the measured requests, those within both bounds (`serving_metrics.Goodput`)
    goodput_pct_low95: float | None = None  # its one-sided 95% lower bound
    itl_ms_p50: float | None = None
    ttst_ms_p50: float | None = None
    offered_rps: float | None = None  # the rate the measured requests were really sent at (`results.offered_rate`)
    run: LoadRun | None = field(default=None, compare=False, repr=False)  # the load behind it: its slices, the export

    @property
    def failed(self) -> int:
        return self.sent - self.ok

    @property
    def error_rate(self) -> float:
        return self.failed / self.sent if self.sent else 1.0

    def row(self) -> dict[str, Any]:
        return {
            "rate_rps": self.rate_rps,
            "offered_rps": self.offered_rps,
            "achieved_rps": self.achieved_rps,
            "requests": self.sent,
            "ok": self.ok,
            "statistic": self.stat,
            "ttft_ms": self.ttft_ms,
            "tpot_ms": self.tpot_ms,
            "e2e_ms": self.e2e_ms,
            "errors": self.failed,
            "http_503": self.http_503,
            "error_rate": self.error_rate,
            "goodput_pct": self.goodput_pct,
            "goodput_pct_low95": self.goodput_pct_low95,
            "itl_ms_p50": self.itl_ms_p50,
            "ttst_ms_p50": self.ttst_ms_p50,
            "pass": self.passed,
            "why": self.why or "—",
            "load_flags": "; ".join(self.flags) or "—",
        }


def judge_point(rate_rps: float, sent: int, summary: LoadSummary, slo: SloConfig) -> RatePoint:
    """The point a load run at `rate_rps` made, `sent` measured requests asked for (missing rows count as failed).

    One statistic per point: the p99 where every distribution has the 299 samples a p99 needs, else the maximum.
    """
    dists = (summary.ttft, summary.tpot, summary.e2e)
    stat = P99 if all(d is not None and d.p99_reliable for d in dists) else MAX
    ttft, tpot, e2e = (None if d is None else d.p99 if stat == P99 else d.max for d in dists)
    ok = min(summary.ok_requests, sent)
    failed = sent - ok
    reasons = []
    if ok == 0:
        reasons.append("no request answered")
    if ttft is not None and ttft > slo.ttft_p99_ms:
        reasons.append(f"TTFT {stat} {ttft:.0f} ms > {slo.ttft_p99_ms:g} ms")
    if tpot is not None and tpot > slo.tpot_p99_ms:
        reasons.append(f"TPOT {stat} {tpot:.1f} ms > {slo.tpot_p99_ms:g} ms")
    if failed / sent > slo.max_error_rate:
        code_503 = summary.errors_by_code.get(503, 0)
        reasons.append(f"{failed} of {sent} requests failed ({code_503} x 503) > {slo.max_error_rate:.0%}")
    good = summary.goodput
    return RatePoint(
        rate_rps,
        sent,
        ok,
        summary.errors_by_code.get(503, 0),
        ttft,
        tpot,
        e2e,
        stat,
        summary.throughput_rps,
        not reasons,
        "; ".join(reasons),
        summary.flags,
        100.0 * good.share if good else None,
        100.0 * good.share_low if good else None,
        summary.itl.latency.p50 if summary.itl else None,
        summary.ttst.latency.p50 if summary.ttst else None,
        summary.offered_rps,
    )


@dataclass(frozen=True)
class Capacity:
    """The search's answer: the highest passing rate (0 when none passed) and what bounds the true capacity."""

    rate_rps: float
    bound: str  # BRACKETED | BELOW | AT_LEAST
    first_failing_rps: float | None
    lowest_tried_rps: float
    highest_tried_rps: float
    points: int
    ceiling_rps: float | None = None  # set when the first failing rate is the stack's ceiling, not a measured point

    def text(self) -> str:
        if self.bound == BELOW:
            return f"below {self.lowest_tried_rps:g} req/s, the lowest rate tried"
        if self.bound == AT_LEAST:
            return f"at least {self.rate_rps:g} req/s, the highest rate tried (no rate failed)"
        if self.ceiling_rps is not None:
            return (
                f"{self.rate_rps:.3g} req/s (the next rate is above {self.ceiling_rps:.3g} req/s, the estimate of what the "
                "stack completes saturated: not measured, as a higher open-loop rate only grows its queue)"
            )
        return f"{self.rate_rps:.3g} req/s (the first failing rate: {self.first_failing_rps:.3g} req/s)"

    def instances_for(self, target_qps: float) -> tuple[int, str]:
        """Instances for `target_qps` and whether that is "at most" (a passing rate is proven) or "at least"."""
        if self.bound == BELOW:  # capacity < the lowest rate: more than target / lowest instances
            return math.floor(target_qps / self.lowest_tried_rps) + 1, "at least"
        return math.ceil(target_qps / self.rate_rps), "at most"


@dataclass
class RateSearch:
    """The bounded search as a step-by-step state: `next_rate()`, measure it, `record(point)`, until `None`.

    Stepwise so that a caller can interleave several stacks' searches (baseline at a rate, then the
    optimized stack, ...), sharing the machine's drift between them.
    """

    rates: Sequence[float]
    bisect_points: int = 1
    max_points: int = 8
    start: int = 0  # the index in `rates` of the first point (`start_index`)
    ceiling_rps: float | None = None  # the requests/s the stack completes saturated (closed loop); None: unknown
    points: list[RatePoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.rates or any(b <= a for a, b in zip(self.rates, self.rates[1:])):
            raise ValueError(f"rates must be a non-empty, strictly increasing list, not {list(self.rates)}")
        if not 0 <= self.start < len(self.rates):
            raise ValueError(f"start must index rates (0..{len(self.rates) - 1}), not {self.start}")

    def _bracket(self) -> tuple[float | None, float | None, bool]:
        """The highest passing rate, the lowest failing one (measured, or the ceiling once the walk up reaches it) and
        whether that one is the ceiling."""
        passing = [p.rate_rps for p in self.points if p.passed]
        failing = [p.rate_rps for p in self.points if not p.passed]
        low = max(passing) if passing else None
        if failing:
            return low, min(failing), False
        if self._capped(low):
            return low, self.ceiling_rps, True
        return low, None, False

    def _capped(self, low: float | None) -> bool:
        """Whether the walk up has passed every rate of `rates` below the ceiling (a pass above it: not capped)."""
        if self.ceiling_rps is None or low is None or low >= self.ceiling_rps:
            return False
        up = next((r for r in self.rates if r > low), None)
        return up is not None and up > self.ceiling_rps

    def next_rate(self) -> float | None:
        if len(self.points) >= self.max_points:
            return None
        if not self.points:
            return self.rates[self.start]
        low, high, _ = self._bracket()
        tried = [p.rate_rps for p in self.points]
        if high is None:  # every point passed: walk up
            return next((r for r in self.rates if r > max(tried)), None)
        if low is None:  # every point failed: walk down
            return next((r for r in reversed(self.rates) if r < min(tried)), None)
        # The walk visits rates of `rates` only and a bracket is two neighbours of it (or one and the ceiling below the
        # next), so a geometric midpoint is never one of them: the points off the list are the bisection's.
        if sum(p.rate_rps not in self.rates for p in self.points) >= self.bisect_points:
            return None
        return math.sqrt(low * high)

    def record(self, point: RatePoint) -> None:
        self.points.append(point)

    @property
    def done(self) -> bool:
        return self.next_rate() is None

    def capacity(self) -> Capacity:
        if not self.points:
            raise ValueError("no point measured")
        low, high, capped = self._bracket()
        tried = [p.rate_rps for p in self.points]
        bound = BELOW if low is None else AT_LEAST if high is None else BRACKETED
        return Capacity(low or 0.0, bound, high, min(tried), max(tried), len(self.points), self.ceiling_rps if capped else None)


def start_index(rates: Sequence[float], near_rps: float | None, share: float) -> int:
    """The highest of `rates` at or below `share` x `near_rps` (a rate the server is known to answer closed-loop), as
    an index; 0 (the lowest) when that is unknown or below every rate."""
    if not near_rps or share <= 0:
        return 0
    below = [i for i, rate in enumerate(rates) if rate <= share * near_rps]
    return below[-1] if below else 0


def search(
    rates: Sequence[float],
    measure: Callable[[float], RatePoint],
    *,
    bisect_points: int = 1,
    max_points: int = 8,
    start: int = 0,
    ceiling_rps: float | None = None,
) -> tuple[list[RatePoint], Capacity]:
    """Run one bounded search with `measure(rate) -> RatePoint`: the points in the order measured, and the capacity."""
    state = RateSearch(rates, bisect_points, max_points, start, ceiling_rps)
    while (rate := state.next_rate()) is not None:
        state.record(measure(rate))
    return state.points, state.capacity()
