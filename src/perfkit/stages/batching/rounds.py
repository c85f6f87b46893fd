"""What one batching variant measured in each round, and the variant over its rounds.

A round is one fresh server under the load (its own warm-up requests), followed in the same round
by the offline engine at the batch width that server formed, the same output tokens per row and as
many batches as the server ran in its measured window: served and offline like for like, in the
same minutes. The served rate is the server's own token counter between the first and the last
/metrics scrape inside the measured window (warm-up answered before it opens), so it counts
exactly the tokens generated in that window.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perfkit.measure import Spread, cv, ratio

if TYPE_CHECKING:
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
    """One server variant in one round: the load, and what /metrics said over the measured window."""

    index: int
    load: LoadRun
    server: ResourceUsage
    window_s: float  # between the first and last scrape inside the measured window
    served_tok_s: float  # output tokens the server generated in that window, per second
    batches: float  # prefill passes in the window
    mean_batch_size: float  # rows per decode step
    requests_per_prefill: float
    queue_wait_ms_mean: float | None
    fill_wait_ms_mean: float | None  # the wait batching adds: the idle engine holding requests for the batch to fill
    batch_histogram: dict[str, float] = field(default_factory=dict)
    offline: Offline | None = None  # the engine at the width this round formed


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
    def mean_batch_size(self) -> float:
        return statistics.fmean(r.mean_batch_size for r in self.rounds)

    @property
    def requests_per_prefill(self) -> float:
        return statistics.fmean(r.requests_per_prefill for r in self.rounds)

    @property
    def batches(self) -> float:
        return sum(r.batches for r in self.rounds)

    def mean_of(self, get: Any) -> float:
        values = [v for r in self.rounds if (v := get(r)) is not None]
        return statistics.fmean(values) if values else float("nan")

    def histogram(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.rounds:
            for size, n in r.batch_histogram.items():
                out[size] = out.get(size, 0.0) + n
        return out

    def figures(self) -> dict[str, Spread]:
        """Every timed figure of this variant, by column name."""
        out = {"throughput_tok_s": self.served, "client_tok_s": self.client}
        for key, value in (("offline_tok_s", self.offline), ("served_vs_offline_ratio", self.served_vs_offline),
                           ("queue_wait_ms_mean", self.queue_wait), ("fill_wait_ms_mean", self.fill_wait)):
            if value is not None:
                out[key] = value
        return out

    def metrics(self, noisy_cv: float, min_repeats: int) -> dict[str, Any]:
        """One table row: every timed figure with its interval, rounds, samples, CV and flags; then the rest."""
        out: dict[str, Any] = {"scheduler": self.scheduler, "max_batch_size": self.max_batch_size,
                               "rounds": len(self.rounds), "requests": self.requests}
        for key, value in self.figures().items():
            out |= value.columns(key, noisy_cv, min_repeats)
        out |= {"mean_batch_size": self.mean_batch_size, "requests_per_prefill": self.requests_per_prefill,
                "batches": self.batches, "served_above_engine": self.served_above_engine,
                "latency_ms_p50": self.mean_of(lambda r: r.load.summary.e2e.p50 if r.load.summary.e2e else None),
                "tpot_ms_p50": self.mean_of(lambda r: r.load.summary.tpot.p50 if r.load.summary.tpot else None),
                "error_rate": self.mean_of(lambda r: r.load.summary.error_rate),
                "server_cpu_util_pct": self.mean_of(lambda r: r.server.cpu_util_pct),
                "peak_rss_mb": max(r.server.peak_rss_mb for r in self.rounds)}
        flags = sorted({f for r in self.rounds for f in r.load.summary.flags})
        if flags:
            out["load_flags"] = "; ".join(flags)
        return out
