"""Service-level objectives: the shared `slo` params section (`perfkit.config` makes it `cfg.slo`).

An SLO here bounds tail latency as a user sees it (p99 time to first token, p99 time per output
token) and the share of requests that may fail; a capacity is the highest request rate at which a
deployment still meets it, found by the bounded rate search its other keys set (`perfkit.load.slo`).
"""

from __future__ import annotations

import math

from pydantic import Field, field_validator

from perfkit.section import Section


class SloConfig(Section):
    """A service-level objective on tail latency, and the bounded rate search that finds the capacity holding it."""

    ttft_p99_ms: float = Field(5000.0, gt=0, le=3_600_000, description="p99 time to first token a request may take, at most")
    tpot_p99_ms: float = Field(150.0, gt=0, le=3_600_000, description="p99 time per output token, at most")
    max_error_rate: float = Field(
        0.01, ge=0, lt=1, description="share of a point's requests that may fail (503s, other errors, unanswered)"
    )
    rates: tuple[float, ...] = Field(
        (0.25, 0.5, 1.0, 2.0, 4.0),
        min_length=1,
        max_length=16,
        description="open-loop request rates (req/s) the search walks, up from its start to the first that breaks the SLO",
    )
    requests: int = Field(30, ge=1, le=100_000, description="measured requests per rate, at least; under 299 a point judges its maximum")
    min_point_s: float = Field(
        20.0,
        ge=0,
        le=3600,
        description="each point lasts at least this long at its rate (requests = max(requests, rate x this)): "
        "a short burst can pass while the queue it builds would grow without bound under the same rate sustained",
    )
    warmup_requests: int = Field(
        2, ge=0, le=10_000, description="requests sent first at each rate, not measured (conversations: their ramp)"
    )
    bisect_points: int = Field(1, ge=0, le=8, description="points bisecting the last passing and first failing rate")
    max_points: int = Field(8, ge=1, le=32, description="points per stack at most, bisection included")

    def point_requests(self, rate_rps: float) -> int:
        """Measured requests at `rate_rps`: `requests`, or enough to last `min_point_s` at that rate.

        Seen here: 30 requests at 5.66 req/s (5 s of arrivals) passed the SLO on a server that completed
        2.99 req/s; the queue drained after the burst instead of growing.
        """
        return max(self.requests, math.ceil(rate_rps * self.min_point_s))

    @field_validator("rates")
    @classmethod
    def _rates_increase(cls, rates: tuple[float, ...]) -> tuple[float, ...]:
        if any(r <= 0 for r in rates):
            raise ValueError("each rate must be a positive request rate (req/s)")
        if any(b <= a for a, b in zip(rates, rates[1:])):
            raise ValueError("rates must increase strictly (the search walks them in order)")
        return rates
