"""The server's Prometheus metrics, one registry per server so that several apps in one process stay apart.

Counters and histograms are what a scraper needs to rebuild rates and distributions: request
latency by route and status, requests in flight, queue depth, batch sizes (per prefill and per
decode step) and queue wait of the scheduler, tokens generated, errors by status code, the prefix store's lookups
(prompt tokens looked up and matched) where the engine has one, and GPU memory where a GPU is used (allocated by
torch, and in use and total on the device, which the memory alert divides: `perfkit.monitoring.rules`).

The metric names are written once, here: stages and bench scripts read a server's histograms with
`scrape` and subtract two scrapes with `histogram_delta`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from perfkit.prefix_cache import PrefixStore

BATCH_METRIC = "perfkit_batch_size"  # requests per prefill
ROWS_METRIC = "perfkit_decode_rows"  # rows per decode step
WAIT_METRIC = "perfkit_queue_wait_seconds"
FILL_METRIC = "perfkit_fill_wait_seconds"
TOKENS_METRIC = "perfkit_generated_tokens"
PREFIX_MATCHED_METRIC = "perfkit_prefix_matched_tokens"  # prompt tokens whose keys and values the prefix store gave
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
REFUSAL_CODES = ("429", "503")  # the token bucket's and the queue bound's answers


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "perfkit_request_latency_seconds",
            "request latency, first byte in to last byte out",
            ("route", "code"),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge("perfkit_requests_in_flight", "requests being handled", registry=r)
        self.queue_depth = Gauge("perfkit_queue_depth", "generation requests waiting for the model", registry=r)
        self.batch_size = Histogram(
            BATCH_METRIC,
            "requests prefilled together: a dynamic batch, or the newcomers joining a continuous one",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.decode_rows = Histogram(
            ROWS_METRIC, "rows in each decode step: the batch size the engine actually ran", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            WAIT_METRIC, "time from admission to the start of the request's prefill", buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.fill_wait = Histogram(
            FILL_METRIC,
            "time the idle engine held a request for its batch to fill: the wait batching adds",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tokens = Counter(TOKENS_METRIC, "output tokens generated", registry=r)
        self.errors = Counter("perfkit_errors", "responses with status >= 400", ("code",), registry=r)
        self.gpu_memory = Gauge("perfkit_gpu_memory_bytes", "torch CUDA memory allocated", registry=r)
        # Labelled by device, so that on a CPU no sample is exported and the memory alert has nothing to read.
        self.gpu_memory_used = Gauge(
            "perfkit_gpu_memory_used_bytes", "device memory in use, by any process (total - free)", ("device",), registry=r
        )
        self.gpu_memory_total = Gauge("perfkit_gpu_memory_total_bytes", "device memory", ("device",), registry=r)

    def expect_refusals(self, routes: Sequence[str]) -> None:
        """Export the refusals' series (429, 503 on each admitted route) at 0 before the first one happens.

        A labelled series exists only from its first observation, and rate() needs two samples of a
        series: without this, the error-rate alert could see the first refusals only at the second
        scrape after them, one scrape interval late.
        """
        for route in routes:
            for code in REFUSAL_CODES:
                self.latency.labels(route, code)
        for code in REFUSAL_CODES:
            self.errors.labels(code)

    def observe_response(self, route: str, code: int, seconds: float) -> None:
        self.latency.labels(route, str(code)).observe(seconds)
        if code >= 400:
            self.errors.labels(str(code)).inc()

    def render(self) -> bytes:
        import torch  # the server has it loaded already; a scraper importing this module does not need it

        if torch.cuda.is_available():
            self.gpu_memory.set(torch.cuda.memory_allocated())
            device = torch.cuda.current_device()
            free, total = torch.cuda.mem_get_info(device)
            self.gpu_memory_used.labels(str(device)).set(total - free)
            self.gpu_memory_total.labels(str(device)).set(total)
        return generate_latest(self.registry)


class PrefixStoreCollector:
    """The engine's prefix store, read at each scrape: prompt tokens looked up and matched, hits, bytes held."""

    def __init__(self, store: PrefixStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        s = self.store
        yield CounterMetricFamily("perfkit_prefix_prompt_tokens", "prompt tokens looked up in the prefix store", value=s.prompt_tokens)
        yield CounterMetricFamily(
            PREFIX_MATCHED_METRIC, "prompt tokens whose keys and values were reused, not recomputed", value=s.matched_tokens
        )
        yield CounterMetricFamily("perfkit_prefix_hits", "prompts that reused a stored prefix", value=s.hits)
        yield GaugeMetricFamily("perfkit_prefix_store_bytes", "bytes of keys and values the prefix store holds", value=s.bytes)


def matched_prompt_tokens(base_url: str) -> float:
    """Prompt tokens a perfkit server's prefix store has matched since it started (0 without a store)."""
    return scrape(base_url).get(PREFIX_MATCHED_METRIC, {}).get("total", 0.0)


def scrape(base_url: str) -> dict[str, dict[str, float]]:
    """The server's histograms as {metric: {"count", "sum", "le=<bound>": cumulative count}}, counters as {metric: {"total"}}."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for suffix in ("_bucket", "_count", "_sum", "_total"):
                if sample.name.endswith(suffix):
                    base = sample.name[: -len(suffix)]
                    key = f"le={sample.labels['le']}" if suffix == "_bucket" else suffix[1:]
                    out.setdefault(base, {})[key] = out.get(base, {}).get(key, 0.0) + sample.value
    return out


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


def _bounds(hist: Mapping[str, float]) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of each "le=<bound>" entry, lowest bound first."""
    return sorted((float(k[3:]), v) for k, v in hist.items() if k.startswith("le="))


def histogram_quantile(hist: Mapping[str, float], q: float) -> float | None:
    """The `q`-quantile of {"le=<bound>": cumulative count}, as Prometheus's histogram_quantile gives it: linear
    within the bucket that holds the rank (the lowest bucket from 0), the highest finite bound if the rank falls
    in +Inf; None without observations."""
    bounds = _bounds(hist)
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    lower = below = 0.0
    for bound, cumulative in bounds:
        if cumulative >= rank and cumulative > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower


def bucket_counts(hist: dict[str, float]) -> dict[str, float]:
    """Observations per bucket (not cumulative), keyed by the bucket's upper bound; empty buckets dropped."""
    bounds = _bounds(hist)
    out, previous = {}, 0.0
    for bound, cumulative in bounds:
        if cumulative - previous > 0:
            out["inf" if bound == float("inf") else f"{bound:g}"] = cumulative - previous
        previous = cumulative
    return out


class PeriodicScrape:
    """/metrics scraped every `interval_s` in a thread while a load runs, each scrape stamped with the wall clock.

    The load's measured window (warm-up excluded) is known only afterwards; `window(start, end)` cuts it out
    from the scrapes inside it: the first at or after `start` and the last at or before `end`.
    """

    def __init__(self, base_url: str, interval_s: float = 0.5) -> None:
        import threading

        self.base_url, self.interval_s = base_url, interval_s
        self.scrapes: list[tuple[float, dict[str, dict[str, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        import time

        while True:
            t = time.time()
            try:
                self.scrapes.append((t, scrape(self.base_url)))
            except Exception:  # noqa: BLE001 - a missed scrape leaves a gap, not a failed run
                pass
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> PeriodicScrape:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def window(self, start: float, end: float) -> tuple[float, dict[str, dict[str, float]]]:
        """(seconds between the two scrapes, {metric: delta}) over the scrapes inside [start, end]."""
        inside = [(t, s) for t, s in self.scrapes if start <= t <= end]
        if len(inside) < 2:
            raise ValueError(
                f"fewer than two /metrics scrapes inside the {end - start:.2f} s measured window "
                f"(every {self.interval_s:g} s): lengthen the load or scrape more often"
            )
        (t0, first), (t1, last) = inside[0], inside[-1]
        return t1 - t0, {name: histogram_delta(first.get(name, {}), values) for name, values in last.items()}
