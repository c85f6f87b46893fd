"""The batching stage: sequential vs dynamic vs continuous batching under the same load, against the offline engine.

Each variant is a fresh server (same model, threads and prompts) under the same closed-loop Locust
load. Dynamic batching collects up to `max_batch_size` requests, or lets the idle engine wait at
most `max_wait_ms` for them, and runs them as one left-padded batch until its last row ends: each
decode step reads the weights once for every row, so output tokens/s rise with the batch size
while each request waits longer. Continuous batching refills a finished row's slot at the next
decode step instead of waiting for the whole batch. A batch can never hold more requests than
there are in flight, so with N closed-loop users `max_batch_size` above N changes nothing.

The batch size the engine actually ran (rows per decode step), and each request's queue wait,
come from the server's Prometheus `/metrics` (histograms scraped before and after the run and
subtracted). Beside each
variant, the engine's offline throughput at the mean batch size formed, in this process with
the same prompts and threads (`Engine.generate_batch`, no HTTP, no queue): the gap between the
two is what serving costs. Prefill batches poorly on a CPU (it is already compute-bound for one
long prompt), so the prompt length of the workload decides how much batching can gain; the
offline ratio batch-b / batch-1 measured here says how much it can at this prompt length.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from perfkit.config import SchedulerMode, Section
from perfkit.stages.base import MEASURED_DATA, Plot, StageSpec

class BatchingConfig(Section):
    """Sequential vs dynamic vs continuous batching under the same load, against the engine's offline throughput."""

    schedulers: tuple[SchedulerMode, ...] = ("sequential", "dynamic", "continuous")
    max_batch_sizes: tuple[int, ...] = Field(
        (4, 8), description="dynamic: one variant per max_batch_size; continuous: one, at the largest"
    )
    offline_repeats: int = Field(2, ge=1, le=1000, description="timed offline batches at the batch size the server ran")
    target_offline_ratio: float = Field(0.8, gt=0, le=10, description="served tokens/s over offline tokens/s, at least")
    target_speedup: float = Field(3.0, gt=0, le=1000, description="dynamic over sequential tokens/s, at least")
    launch_timeout_s: float = Field(180.0, gt=0, le=3600)

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
    title="Batching: sequential vs dynamic vs continuous under the same load",
    description="One fresh server per scheduler and max_batch_size under the same closed-loop load; rows per decode "
    "step and queue wait from the server's /metrics; the offline engine at the batch size each variant formed.",
    run="perfkit.stages.batching.experiment:run",
    section=BatchingConfig,
    reads=("model", "hardware", "workload", "serving", "load"),
    data=MEASURED_DATA,
    plots=(Plot("variants", "variant", "throughput_tok_s"), Plot("batch_sizes", "batch_size", "decode_steps")),
    order=40,
)
