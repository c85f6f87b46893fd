"""The capacity stage: the highest request rate each stack serves within a latency SLO (goodput).

Two stacks, each its own reference server with the rate limiter off and the queue bound
(`serving.max_queue_wait_s`) as params.yaml gives it, so that overload shows as what a client of
the deployment would see (queueing, then 503s), not as a client-side limit:

- baseline: the unoptimized deployment (sequential scheduler, fp32);
- optimized: the stack the optimized stage chose, read from its saved result (`perfkit.upstream`);
  when that stage has not run, the fallback stack in this
  section (dynamic batching at 8, bf16), and the result says so.

Each stack gets an open-loop Poisson load (`perfkit.load.runner`, `mode=open`) at the rates of
`slo.rates`, upward until the first rate whose p99 TTFT, p99 TPOT or error share breaks the SLO,
then `slo.bisect_points` bisections (`perfkit.load.slo`). A search starts at the highest rate at or
below `start_share` of the requests/s its stack answered under the optimized stage's closed loop
(the lowest rate when that stage has not run), and walks down when that first point fails: the low
rates a stack passes by a wide margin take the longest to measure (30 requests at 0.25 req/s: 2 min)
and say least about its capacity. A search walks up no further than the requests/s its
stack completed in its best closed-loop round there (`closed_loop_ceiling`): saturated, a server
completes no more, so a higher open-loop rate only grows its queue, and that ceiling stands in for the
first failing rate (unmeasured) that the bisection closes in on. The two searches are interleaved point
by point (baseline at a rate, then optimized, ...), so machine drift falls on both. The capacity
(the highest passing rate) sets the instances, and the monthly $, needed for `cost.target_qps`.
One search per stack: a capacity has no between-round interval, and the report says so.

With `capacity.multi_turn`, the optimized stack is searched a second time on multi-turn conversations
(the `multi_turn` workload: every turn re-sends the history, earlier answers included; conversations
arrive at Poisson times at the rate / their turns) with its prefix store on (`multi_turn_prefix_mb`), so
that a turn prefills only what is new: the capacity of a chat service beside the single-turn one.
Its start and ceiling are the single-turn search's (a turn costs no less than a single request). Until
a conversation's later turns come due, turns arrive at a fraction of the rate, so each point counts
its ramp as warm-up however long the answers make it, measuring from the last turn of the first
conversation started after the first one reached its last turn (the locustfile's `_last_turn`), and
records the rate its measured turns arrived at: where answers still pace the users, the point says so.
"""

from __future__ import annotations

from pydantic import Field

from perfkit.config import Section
from perfkit.service_sections import SchedulerMode, ServingDtype
from perfkit.stages.base import MEASURED_DATA, Plot, StageSpec


class CapacityConfig(Section):
    """The capacity stage's own settings; the SLO and the rate search are the shared `slo` section."""

    drain_s: float = Field(
        60.0, gt=0, le=3600, description="per point: time beyond 1.5x its arrival schedule for answers to arrive; unanswered requests fail"
    )
    launch_timeout_s: float = Field(180.0, gt=0, le=3600)
    fallback_scheduler: SchedulerMode = Field("dynamic", description="optimized stack when the optimized stage has not run")
    fallback_max_batch_size: int = Field(8, ge=1, le=256, description="its batch size")
    fallback_dtype: ServingDtype = Field("bfloat16", description="its precision")
    multi_turn: bool = Field(True, description="also search the optimized stack on multi-turn conversations, its prefix store on")
    start_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="each search starts at the highest of slo.rates at or below this share of the requests/s its stack "
        "answered under the optimized stage's closed loop (0, or that stage not run: the lowest rate); a first point "
        "that fails walks down",
    )
    closed_loop_ceiling: bool = Field(
        True,
        description="a search walks up no further than the requests/s its stack completed in its best closed-loop "
        "round of the optimized stage (saturated: a higher open-loop rate only grows the queue); the multi-turn search "
        "takes the optimized stack's single-turn ceiling",
    )
    multi_turn_prefix_mb: float = Field(1024.0, gt=0, le=1_048_576, description="that search's prefix KV store, MiB")


STAGE = StageSpec(
    name="capacity",
    budget_s=650,
    title="Capacity at an SLO: the highest request rate each stack serves within its tail-latency objective",
    description="Baseline (sequential, fp32) and the optimized stack under open-loop Poisson load at increasing rates "
    "(rate limiter off, default queue bound, 503s counted as failures): p99 TTFT and TPOT against the SLO, a bounded "
    "search for the highest passing rate, the latency-vs-rate curve, and the instances and $ for the target QPS; the "
    "optimized stack again on multi-turn conversations with its prefix store on.",
    run="perfkit.stages.capacity.experiment:run",
    section=CapacityConfig,
    reads=("model", "hardware", "workload", "serving", "load", "cost", "slo"),
    data=MEASURED_DATA,
    plots=(Plot("curve", "rate_rps", "ttft_ms"),),
    upstream=("optimized",),
    upstream_file="result.json",
    order=900,
)
