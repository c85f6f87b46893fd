"""The per-token and per-objective serving figures, computed from each request's streamed-chunk arrival times.

Definitions follow vLLM's `bench serve`, so a user can set perfkit's figures beside theirs:

- *ITL* (inter-token latency): the gaps between consecutive streamed chunks of a request, pooled over
  every successful request (a request of n chunks gives n - 1 gaps). Its p50/p90/p99 describe what a
  reader of the stream sees between words; TPOT, (E2E - TTFT) / (n - 1) per request, is its mean.
  (guidellm's `inter_token_latency_ms` is TPOT; its `time_per_output_token_ms` includes TTFT.)
- *time to second token*: from the send to the second chunk; the first decode step after prefill,
  where a batching server makes a new row wait for the batch it joins.
- *goodput*: the requests that met every per-request objective (answered, TTFT and TPOT within the
  `slo` bounds), as a rate over the measured window and as a share of the measured requests. The
  share comes with its one-sided 95% Clopper-Pearson lower bound: with 30 requests and no miss the
  bound is 90.5% (failures up to ~10% are not ruled out), and a claim of 99% attainment needs at
  least 299 requests without a miss. A share is "met" only where that lower bound clears it.

Intervals resample requests, not tokens: a request's gaps move together (a slow batch slows all of
them), so resampling gaps alone would pretend to far more independent samples than were measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from perfkit.measure import Latency

if TYPE_CHECKING:
    from perfkit.load.results import RequestTiming

LEVEL = 0.95
RESAMPLES = 1000
MAX_CELLS = 20_000_000  # resamples x pooled values held at once


@dataclass(frozen=True)
class Quantiles:
    """A pooled distribution (milliseconds) and bootstrap intervals of its p50 and p99, resampling requests."""

    latency: Latency
    p50_ci: tuple[float, float] | None
    p99_ci: tuple[float, float] | None  # None where the p99 is not reported (too few samples: `Latency.p99_reliable`)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        out = self.latency.as_metrics(prefix)
        for q, ci in (("p50", self.p50_ci), ("p99", self.p99_ci)):
            if ci is not None:
                out[f"{prefix}_ms_{q}_ci_low"], out[f"{prefix}_ms_{q}_ci_high"] = ci
        return out


def pooled_quantiles(per_request_s: Sequence[Sequence[float]], seed: int = 0) -> Quantiles | None:
    """The values of every request pooled (seconds in, milliseconds out), with p50 and p99 intervals from
    resampling whole requests; None when no request has a value."""
    groups = [np.asarray(g, dtype=float) * 1000.0 for g in per_request_s if len(g)]
    if not groups:
        return None
    values = np.concatenate(groups)
    latency = Latency.from_samples(values / 1000.0)
    if len(groups) < 2:
        return Quantiles(latency, None, None)
    owner = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    order = np.argsort(values, kind="stable")
    sorted_values, sorted_owner = values[order], owner[order]
    rng = np.random.default_rng(seed)
    resamples = min(RESAMPLES, max(200, MAX_CELLS // len(values)))  # bounded memory on long runs
    counts = rng.multinomial(len(groups), np.full(len(groups), 1.0 / len(groups)), size=resamples)  # requests drawn
    weights = counts[:, sorted_owner].cumsum(axis=1)  # each resample's cumulative weight along the sorted values
    alpha = (1.0 - LEVEL) / 2

    def ci(q: float) -> tuple[float, float]:
        positions = (weights < q * weights[:, -1:]).sum(axis=1)  # the weighted quantile's index in each resample
        picks = sorted_values[np.minimum(positions, len(sorted_values) - 1)]
        lo, hi = np.quantile(picks, [alpha, 1.0 - alpha])
        return float(lo), float(hi)

    return Quantiles(latency, ci(0.50), ci(0.99) if latency.p99_reliable else None)


def attainment_lower_bound(met: int, total: int, level: float = LEVEL) -> float:
    """One-sided Clopper-Pearson lower bound on the share of requests meeting the objective (0 when none did)."""
    if total <= 0 or met <= 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(1.0 - level, met, total - met + 1))


@dataclass(frozen=True)
class Goodput:
    """The measured requests that met every per-request objective: how many, at what rate, and the share's bound."""

    met: int
    requests: int
    rate_rps: float  # met requests over the measured window (each weighted by its share of tokens inside it)
    ttft_ms: float  # the bounds each request was held to
    tpot_ms: float

    @property
    def share(self) -> float:
        return self.met / self.requests if self.requests else 0.0

    @property
    def share_low(self) -> float:
        return attainment_lower_bound(self.met, self.requests)

    def meets(self, share: float) -> bool:
        """True only when the lower bound clears `share`: the count is large enough to show it."""
        return self.share_low >= share

    def as_metrics(self) -> dict[str, Any]:
        return {
            "goodput_rps": self.rate_rps,
            "goodput_pct": 100.0 * self.share,
            "goodput_pct_low95": 100.0 * self.share_low,
            "goodput_requests_met": self.met,
        }

    def text(self) -> str:
        return (
            f"{self.met} of {self.requests} requests within TTFT {self.ttft_ms:g} ms and TPOT {self.tpot_ms:g} ms "
            f"({self.share:.1%}, at least {self.share_low:.1%} at 95%), {self.rate_rps:.3g} req/s"
        )


def meets_objectives(row: RequestTiming, ttft_ms: float, tpot_ms: float) -> bool:
    """Answered in full, first token within `ttft_ms`, and (for two tokens or more) time per token within `tpot_ms`."""
    if not row.ok or row.ttft_s is None or row.ttft_s * 1000.0 > ttft_ms:
        return False
    tpot = row.tpot_s
    return tpot is None or tpot * 1000.0 <= tpot_ms


def goodput(rows: Sequence[RequestTiming], shares: Sequence[float], window_s: float, ttft_ms: float, tpot_ms: float) -> Goodput:
    """Goodput of the measured `rows`; `shares` weighs each row by its output inside the window (as throughput does)."""
    met = [meets_objectives(r, ttft_ms, tpot_ms) for r in rows]
    rate = sum(s for s, m in zip(shares, met) if m) / window_s if window_s > 0 else 0.0
    return Goodput(sum(met), len(rows), rate, ttft_ms, tpot_ms)
