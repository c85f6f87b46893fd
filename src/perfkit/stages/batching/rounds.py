"""What one batching variant measured in each round, and the variant over its rounds.

A round is one fresh server under the load (its own warm-up requests), followed in the same round
by the offline engine at the batch width that server formed, the same output tokens per row and as
many batches as the server ran in its measured window: served and offline like for like, in the
same minutes. The served rate is the server's own token counter between the first and the last
/metrics scrape inside the measured window (warm-up answered before it opens), so it counts
exactly the tokens generated in that window.

An external endpoint (`load.target_url`) is one variant whose rounds carry only what the client
measures: its batch sizes, waits, CPU and memory are None ("not available for an external
endpoint"), never a default that reads like a measurement.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perfkit.measure import Spread, ratio
from perfkit.stats import cv

EXTERNAL = "external"  # the scheduler name of an endpoint perfkit did not start (load.target_url)

if TYPE_CHECKING:
    from perfkit.endpoints.base import EndpointFacts
    from perfkit.hardware import ResourceUsage
    from perfkit.load.runner import LoadRun


@dataclass(frozen=True)
class Offline:
    """The in-process engine: `width` rows of `tokens` output tokens each, one timed batch per entry of `seconds`."""

    width: int
    tokens: int
    seconds: tuple[float, ...]
    prefill_s: float  # mean time to the batch's first token (one prefill for every row)

    @property
    def tok_s(self) -> float:
        return self.width * self.tokens / statistics.fmean(self.seconds)

    @property
    def cv(self) -> float:
        return cv(self.seconds)


@dataclass(frozen=True)
class Round:
    """One server variant in one round: the load, and what /metrics said over the measured window.

    For an external endpoint the window and the rate are the client's, and what only the reference
    server knows (`server` and the /metrics figures) is None.
    """

    index: int
    load: LoadRun
    server: ResourceUsage | None
    window_s: float  # between the first and last scrape inside the measured window
    served_tok_s: float  # output tokens the server generated in that window, per second
    batches: float | None  # prefill passes in the window
    mean_batch_size: float | None  # rows per decode step
    requests_per_prefill: float | None
    queue_wait_ms_mean: float | None
    fill_wait_ms_mean: float | None  # the wait batching adds: the idle engine holding requests for the batch to fill
    batch_histogram: dict[str, float] = field(default_factory=dict)
    offline: Offline | None = None  # the engine at the width this round formed
    endpoint: EndpointFacts | None = None  # what answered (None: a round saved before endpoints were recorded)


def spread(values: list[float], cv_within: float = 0.0, samples: int = 0) -> Spread | None:
    return Spread(tuple(values), cv_within, samples) if values else None


@dataclass(frozen=True)
class Variant:
    """One server configuration over its rounds."""

    name: str
    scheduler: str
    max_batch_size: int
    rounds: tuple[Round, ...]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(r.load.summary.ok_requests for r in self.rounds)

    @property
    def endpoint(self) -> EndpointFacts | None:
        return self.rounds[0].endpoint if self.rounds else None

    @property
    def served(self) -> Spread:
        """Output tokens/s from /metrics, one window per round; the CV is between rounds."""
        return Spread(tuple(r.served_tok_s for r in self.rounds), 0.0, self.requests)

    @property
    def client(self) -> Spread:
        """Output tokens/s as the load generator saw them (its measured window, token shares)."""
        return Spread(tuple(r.load.summary.throughput_tok_s for r in self.rounds), 0.0, self.requests)

    @property
    def offline(self) -> Spread | None:
        runs = [r.offline for r in self.rounds if r.offline is not None]
        if len(runs) != len(self.rounds):
            return None
        return Spread(tuple(o.tok_s for o in runs), statistics.fmean(o.cv for o in runs), sum(len(o.seconds) for o in runs))

    @property
    def served_vs_offline(self) -> Spread | None:
        """Per-round paired ratios: served over the engine at the width that round formed, minutes apart at most."""
        offline = self.offline
        return ratio(self.served, offline) if offline is not None else None

    @property
    def served_above_engine(self) -> bool:
        """A server cannot beat its own engine on the same batches: a served mean above the engine's interval is a
        measurement fault (something else slowed the offline run), not a result."""
        offline = self.offline
        if offline is None:
            return False
        high = offline.ci[1] if offline.ci is not None else offline.mean
        return self.served.mean > high

    @property
    def queue_wait(self) -> Spread | None:
        waits = [r.queue_wait_ms_mean for r in self.rounds if r.queue_wait_ms_mean is not None]
        return spread(waits, 0.0, self.requests) if len(waits) == len(self.rounds) else None

    @property
    def fill_wait(self) -> Spread | None:
        waits = [r.fill_wait_ms_mean for r in self.rounds if r.fill_wait_ms_mean is not None]
        return spread(waits, 0.0, self.requests) if len(waits) == len(self.rounds) else None

    @property
    def utilization(self) -> Spread | None:
        """Rows per decode step as a % of the batch width, per round: how full the batches ran (C17's utilization)."""
        sizes = [r.mean_batch_size for r in self.rounds if r.mean_batch_size is not None]
        if not self.max_batch_size or len(sizes) != len(self.rounds) or not sizes:
            return None
        return spread([100 * s / self.max_batch_size for s in sizes], 0.0, self.requests)

    @property
    def external(self) -> bool:
        """An endpoint perfkit did not start: only the client's figures exist."""
        return self.scheduler == EXTERNAL

    @property
    def mean_batch_size(self) -> float | None:
        values = [r.mean_batch_size for r in self.rounds]
        return None if None in values else statistics.fmean(values)  # type: ignore[arg-type]

    @property
    def requests_per_prefill(self) -> float | None:
        values = [r.requests_per_prefill for r in self.rounds]
        return None if None in values else statistics.fmean(values)  # type: ignore[arg-type]

    @property
    def batches(self) -> float | None:
        values = [r.batches for r in self.rounds]
        return None if None in values else sum(values)  # type: ignore[arg-type]

    def mean_of(self, get: Any) -> float:
        values = [v for r in self.rounds if (v := get(r)) is not None]
        return statistics.fmean(values) if values else float("nan")

    def histogram(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.rounds:
            for size, n in r.batch_histogram.items():
                out[size] = out.get(size, 0.0) + n
        return out

    def per_round(self, get: Any) -> Spread | None:
        """A load figure's value in each round, as a spread over the rounds; None unless every round has it."""
        values = [get(r.load.summary) for r in self.rounds]
        return None if not values or any(v is None for v in values) else Spread(tuple(values), 0.0, self.requests)

    def serving(self) -> dict[str, Spread | None]:
        """The per-token figures and goodput, one value per round (each from the chunk arrivals of that round)."""
        return {
            "itl_ms_p50": self.per_round(lambda s: s.itl.latency.p50 if s.itl else None),
            "itl_ms_p99": self.per_round(lambda s: s.itl.latency.p99 if s.itl and s.itl.latency.p99_reliable else None),
            "ttst_ms_p50": self.per_round(lambda s: s.ttst.latency.p50 if s.ttst else None),
            "goodput_pct": self.per_round(lambda s: 100.0 * s.goodput.share if s.goodput else None),
        }

    def figures(self) -> dict[str, Spread]:
        """Every timed figure of this variant, by column name."""
        out = {"throughput_tok_s": self.served, "client_tok_s": self.client}
        for key, value in (
            ("offline_tok_s", self.offline),
            ("served_vs_offline_ratio", self.served_vs_offline),
            ("queue_wait_ms_mean", self.queue_wait),
            ("fill_wait_ms_mean", self.fill_wait),
            *self.serving().items(),
        ):
            if value is not None:
                out[key] = value
        return out

    def metrics(self, noisy_cv: float, min_repeats: int) -> dict[str, Any]:
        """One table row: every timed figure with its interval, rounds, samples, CV and flags; then the rest."""
        out: dict[str, Any] = {
            "scheduler": self.scheduler,
            "max_batch_size": self.max_batch_size,
            "rounds": len(self.rounds),
            "requests": self.requests,
        }
        for key, value in self.figures().items():
            out |= value.columns(key, noisy_cv, min_repeats)
        out |= {
            "mean_batch_size": self.mean_batch_size,
            "requests_per_prefill": self.requests_per_prefill,
            "batches": self.batches,
            "served_above_engine": self.served_above_engine,
            "latency_ms_p50": self.mean_of(lambda r: r.load.summary.e2e.p50 if r.load.summary.e2e else None),
            "tpot_ms_p50": self.mean_of(lambda r: r.load.summary.tpot.p50 if r.load.summary.tpot else None),
            "error_rate": self.mean_of(lambda r: r.load.summary.error_rate),
            "server_cpu_util_pct": self.mean_of(lambda r: r.server.cpu_util_pct if r.server else None),
            "peak_rss_mb": None if self.external else max(r.server.peak_rss_mb for r in self.rounds if r.server),
        }
        flags = sorted({f for r in self.rounds for f in r.load.summary.flags})
        if flags:
            out["load_flags"] = "; ".join(flags)
        return out
