"""The batching stage: sequential vs dynamic vs continuous batching under the same load, against the offline engine.

Each variant is a fresh server (same model, threads and prompts) under the same closed-loop Locust
load. Dynamic batching collects up to `max_batch_size` requests, or lets the idle engine wait at
most `max_wait_ms` for them, and runs them as one left-padded batch until its last row ends: each
decode step reads the weights once for every row, so output tokens/s rise with the batch size
while each request waits longer. Continuous batching refills a finished row's slot at the next
decode step instead of waiting for the whole batch. A batch can never hold more requests than
there are in flight, so with N closed-loop users `max_batch_size` above N changes nothing.

Every variant runs `measure.rounds` times, interleaved (each round every variant once, in the same
order, each a fresh server with its own warm-up), and each round ends with the offline engine in this
process at the batch widths that round's servers formed, with the same output tokens per row and as
many batches as the server ran (`experiment`): served and offline like for like, minutes apart at
most. The batch size the engine ran (rows per decode step), each request's queue wait, the wait
batching adds (the idle engine holding a request for its batch to fill) and the tokens generated
come from the server's Prometheus `/metrics`, scraped periodically so that the measured window
(warm-up excluded) is cut out exactly. Headline figures carry the between-round 95% interval; a
ratio's comes from the per-round paired ratios (`rounds`, `result`). Prefill batches poorly on a
CPU (it is already compute-bound for one long prompt), so the prompt length of the workload decides
how much batching can gain; the offline ratio batch-b / batch-1 says how much it can here.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from perfkit.config import Section
from perfkit.service_sections import SchedulerMode
from perfkit.stages.base import MEASURED_DATA, Plot, StageSpec


class BatchingConfig(Section):
    """Sequential vs dynamic vs continuous batching under the same load, against the engine's offline throughput."""

    schedulers: tuple[SchedulerMode, ...] = ("sequential", "dynamic", "continuous")
    max_batch_sizes: tuple[int, ...] = Field((4, 8), description="dynamic: one variant per max_batch_size; continuous: one, at the largest")
    offline_repeats: int = Field(
        2, ge=1, le=1000, description="timed offline batches per round at least (batch 1 and the largest batch: exactly this)"
    )
    offline_max_batches: int = Field(
        6,
        ge=1,
        le=1000,
        description="offline batches per round at the width a server formed: as many as it ran in its window, at most this",
    )
    scrape_interval_s: float = Field(0.5, gt=0, le=60, description="/metrics scraped this often during the load")
    target_offline_ratio: float = Field(0.8, gt=0, le=10, description="served tokens/s over offline tokens/s, at least")
    target_speedup: float = Field(3.0, gt=0, le=1000, description="dynamic over sequential tokens/s, at least")
    launch_timeout_s: float = Field(180.0, gt=0, le=3600)
    light_load_requests: int = Field(
        40, ge=0, le=10_000, description="C17's wait: measured requests of a light open-loop load per server, over its blocks (0: skip it)"
    )
    light_load_blocks: int = Field(
        2,
        ge=2,
        le=100,
        multiple_of=2,
        description="blocks per server, both servers up, in the order ABBA (BAAB...): a linear drift falls on both alike",
    )
    light_load_share: float = Field(0.25, gt=0, le=1, description="its arrival rate as a share of the engine's capacity for them")
    light_load_max_new_tokens: int = Field(4, ge=1, le=4096, description="its answers' length: short, so that the load is quick")

    @model_validator(mode="after")
    def _sizes(self) -> BatchingConfig:
        sizes = self.max_batch_sizes
        if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
            raise ValueError("max_batch_sizes: distinct positive integers, at least one")
        if len(set(self.schedulers)) != len(self.schedulers) or not self.schedulers:
            raise ValueError("schedulers: each scheduler once, at least one")
        return self


STAGE = StageSpec(
    name="batching",
    budget_s=780,
    title="Batching: sequential vs dynamic vs continuous under the same load",
    description="One fresh server per scheduler and max_batch_size under the same closed-loop load; rows per decode "
    "step and queue wait from the server's /metrics; the offline engine at the batch size each variant formed.",
    run="perfkit.stages.batching.experiment:run",
    section=BatchingConfig,
    reads=("model", "hardware", "workload", "serving", "load", "measure"),
    data=MEASURED_DATA,
    plots=(Plot("variants", "variant", "throughput_tok_s"), Plot("batch_sizes", "batch_size", "decode_steps")),
    order=40,
    version="2",
)
