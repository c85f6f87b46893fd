"""The operations stage: alerts in a real Prometheus, long jobs on a Celery queue, noisy neighbours, an HPA on paper.

Four experiments on the running service rather than the model (claims C18, C9, C8, C3); each is
a module here: `alerts` (rules fire in a real Prometheus under overload, stay quiet otherwise),
`longjobs` (chapter summaries inline or queued while short chats flow), `neighbours` (nine quiet
clients and a burster, FIFO against fair queueing and a token bucket), `autoscale` (the HPA
simulated on a diurnal trace, from the baseline's measured capacity and cold start).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from perfkit.config import Section
from perfkit.service_sections import SchedulerMode
from perfkit.stages.base import MEASURED_DATA, Plot, StageSpec

Part = Literal["alerts", "neighbours", "jobs", "autoscaling"]
DIURNAL = (  # arrivals per hour of the day, in replicas' worth of capacity: a business-hours service
    1.0,
    0.8,
    0.7,
    0.7,
    0.8,
    1.2,
    2.0,
    3.2,
    4.5,
    5.4,
    5.8,
    6.0,
    6.0,
    5.8,
    5.5,
    5.2,
    5.0,
    4.8,
    4.5,
    4.0,
    3.2,
    2.4,
    1.8,
    1.3,
)


class OperationsConfig(Section):
    parts: tuple[Part, ...] = Field(("alerts", "jobs", "neighbours", "autoscaling"), description="experiments run (in this order)")
    scheduler: SchedulerMode = Field("dynamic", description="the server the live experiments run")
    max_batch_size: int = Field(8, ge=1, le=256)
    capacity_users: int = Field(8, ge=1, le=1000, description="closed-loop users of the capacity measurement")
    capacity_requests: int = Field(24, ge=4, le=100_000, description="measured requests of the capacity measurement")
    # alerts (C18)
    alert_window_s: int = Field(15, ge=2, le=3600, description="rate() / histogram window of the rules")
    alert_for_s: int = Field(10, ge=0, le=3600, description="`for:` of every rule")
    latency_slo_s: float = Field(10.0, gt=0, description="p99 latency SLO of the completions routes")
    queue_alert: int = Field(50, ge=1, description="queue depth alert threshold (C18)")
    error_ratio_alert: float = Field(0.01, gt=0, lt=1, description="5xx + 429 share alert threshold (C18)")
    memory_alert: float = Field(0.85, gt=0, lt=1, description="accelerator memory share alert threshold (C18)")
    alert_queue_headroom: float = Field(
        1.5,
        ge=0,
        le=100,
        description="the alerts run on their own server whose queue bound lets this many times "
        "queue_alert requests wait (max_queue_wait_s = headroom x queue_alert / the measured capacity), so the queue "
        "alert can fire whatever the machine's speed; 0 keeps serving.max_queue_wait_s, under which the cap is about "
        "max_queue_wait_s x capacity and may stay under the threshold",
    )
    normal_users: int = Field(2, ge=1, le=1000, description="closed-loop users of the normal phase")
    normal_s: float = Field(30.0, gt=0, le=3600, description="normal phase: no alert may fire")
    overload_factor: float = Field(10.0, gt=1, le=1000, description="overload arrivals as a multiple of capacity")
    overload_s: float = Field(30.0, gt=0, le=3600)
    resolve_cap_s: float = Field(60.0, gt=0, le=3600, description="longest wait for the alerts to resolve")
    # noisy neighbours and the token bucket (C8)
    quiet_clients: int = Field(9, ge=1, le=1000)
    quiet_share: float = Field(0.6, gt=0, lt=1, description="the quiet clients' arrivals together, share of capacity")
    burst_factor: float = Field(10.0, ge=1, le=1000, description="the burster's rate as a multiple of a fair share")
    quiet_requests: int = Field(40, ge=5, le=100_000, description="measured requests of the quiet clients per variant and round")
    context_requests: int = Field(
        20, ge=5, le=100_000, description="the same for the variants run once as context (FIFO, fair without the bucket)"
    )
    neighbour_rounds: int = Field(
        3,
        ge=1,
        le=20,
        description="interleaved rounds of alone and fair + C8's bucket (their p99s "
        "pooled); FIFO and fair without the bucket run in the first round only",
    )
    bucket_rate: float = Field(15.0, gt=0, description="C8's bucket: 15 per second (counted in generated tokens here)")
    bucket_burst: int = Field(30, ge=1, description="C8's bucket: a burst of 30")
    fair_share_tolerance: float = Field(1.5, ge=1, description="target: the quiet p99 with the burster within this x alone")
    # long jobs (C9)
    job_prompt_tokens: int = Field(512, ge=8, le=32_768, description="chapter tokens a summary job reads")
    job_new_tokens: int = Field(128, ge=1, le=8192, description="tokens a summary job writes")
    job_interval_s: float = Field(10.0, gt=0, le=3600, description="one job submitted every this many seconds")
    jobs_s: float = Field(40.0, gt=0, le=3600, description="each job variant's duration")
    short_share: float = Field(0.3, gt=0, lt=1, description="short chat arrivals, share of capacity")
    submit_probe_jobs: int = Field(100, ge=0, le=10_000, description="no-op jobs whose submit times give C9's submit p99 (>= 100)")
    worker_nice: int = Field(10, ge=0, le=19)
    worker_threads: int = Field(1, ge=1, le=512)
    visibility_timeout_s: float = Field(600.0, gt=0, description="longer than the longest job")
    submit_slo_ms: float = Field(200.0, gt=0, description="C9: the job-submit response time")
    keepup_unserved_share: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="the server kept up with the short load when at most this share of the short "
        "requests sent before the last arrival were not answered by it (still queued or running, or refused): keeping "
        "up leaves only about E2E / window in flight, falling behind leaves 1 - served / offered",
    )
    cpu_full_share: float = Field(
        0.9,
        gt=0,
        le=1,
        description="the cores count as full when all processes together used at least this share of (window x cores) CPU seconds",
    )
    # autoscaling, simulated (C3)
    hpa_target_cpu_pct: float = Field(85.0, gt=0, le=100, description="HPA averageUtilization (deploy/k8s/hpa.yaml)")
    hpa_target_queue: float = Field(4.0, gt=0, description="HPA perfkit_queue_depth averageValue per pod")
    hpa_min_replicas: int = Field(1, ge=1)
    hpa_max_replicas: int = Field(12, ge=1)
    hpa_trace: tuple[float, ...] = Field(DIURNAL, description="hourly arrivals in replicas' worth of capacity")
    hpa_day_s: float = Field(86_400.0, gt=0, description="seconds the trace spans (the smoke run compresses it)")
    fixed_peak_utilization: float = Field(0.85, gt=0, le=1, description="a static fleet is sized for the peak at this")
    capacity_rps: float = Field(0.75, gt=0, description="per-replica capacity when the baseline stage has not run")
    cold_start_s: float = Field(10.0, ge=0, description="pod start when the baseline stage has not run")
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> OperationsConfig:
        if len(self.hpa_trace) < 2 or min(self.hpa_trace) < 0:
            raise ValueError("hpa_trace: at least 2 hourly loads, none negative")
        if self.hpa_max_replicas < self.hpa_min_replicas:
            raise ValueError("hpa_max_replicas must be >= hpa_min_replicas")
        if len(set(self.parts)) != len(self.parts):
            raise ValueError("parts: each experiment once (alerts, neighbours, jobs, autoscaling)")
        return self


STAGE = StageSpec(
    name="operations",
    budget_s=930,
    title="Operations: alerts, a job queue, noisy neighbours, autoscaling",
    description="Alert rules in a real Prometheus under normal load and overload (C18), chapter-summary jobs inline "
    "or on a Celery queue under short chats (C9), nine quiet clients and a burster with FIFO, fair queueing and a "
    "token bucket (C8), and Kubernetes' HPA simulated on a diurnal trace (C3).",
    run="perfkit.stages.operations.experiment:run",
    section=OperationsConfig,
    reads=("model", "hardware", "workload", "serving", "load"),
    data=(*MEASURED_DATA, "monitoring", "deploy/k8s"),
    plots=(Plot("neighbours", "variant", "quiet_p99_ms"), Plot("jobs", "variant", "e2e_p99_ms"), Plot("autoscaling", "hour", "replicas")),
    upstream=("baseline",),
    order=90,
)
