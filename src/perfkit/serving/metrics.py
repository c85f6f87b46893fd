"""The server's Prometheus metrics, one registry per server so that several apps in one process stay apart.

Counters and histograms are what a scraper needs to rebuild rates and distributions: request
latency by route and status, requests in flight, queue depth, batch sizes (per prefill and per
decode step) and queue wait of the scheduler, tokens generated, errors by status code, and GPU memory where a GPU is used (allocated by torch, and in use
and total on the device, which the memory alert divides: `perfkit.monitoring.rules`).
"""

from __future__ import annotations

import torch
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "perfkit_request_latency_seconds", "request latency, first byte in to last byte out",
            ("route", "code"), buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.in_flight = Gauge("perfkit_requests_in_flight", "requests being handled", registry=r)
        self.queue_depth = Gauge("perfkit_queue_depth", "generation requests waiting for the model", registry=r)
        self.batch_size = Histogram(
            "perfkit_batch_size", "requests prefilled together: a dynamic batch, or the newcomers joining a continuous one",
            buckets=BATCH_BUCKETS, registry=r,
        )
        self.decode_rows = Histogram(
            "perfkit_decode_rows", "rows in each decode step: the batch size the engine actually ran",
            buckets=BATCH_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "perfkit_queue_wait_seconds", "time from admission to the start of the request's prefill",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.tokens = Counter("perfkit_generated_tokens", "output tokens generated", registry=r)
        self.errors = Counter("perfkit_errors", "responses with status >= 400", ("code",), registry=r)
        self.gpu_memory = Gauge("perfkit_gpu_memory_bytes", "torch CUDA memory allocated", registry=r)
        # Labelled by device, so that on a CPU no sample is exported and the memory alert has nothing to read.
        self.gpu_memory_used = Gauge(
            "perfkit_gpu_memory_used_bytes", "device memory in use, by any process (total - free)", ("device",), registry=r
        )
        self.gpu_memory_total = Gauge("perfkit_gpu_memory_total_bytes", "device memory", ("device",), registry=r)

    def observe_response(self, route: str, code: int, seconds: float) -> None:
        self.latency.labels(route, str(code)).observe(seconds)
        if code >= 400:
            self.errors.labels(str(code)).inc()

    def render(self) -> bytes:
        if torch.cuda.is_available():
            self.gpu_memory.set(torch.cuda.memory_allocated())
            device = torch.cuda.current_device()
            free, total = torch.cuda.mem_get_info(device)
            self.gpu_memory_used.labels(str(device)).set(total - free)
            self.gpu_memory_total.labels(str(device)).set(total)
        return generate_latest(self.registry)
