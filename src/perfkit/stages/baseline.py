"""The baseline stage: the unoptimized deployment under the article's load.

One server process, `sequential` scheduler (one request at a time), fp32, REST, no cache, and N
closed-loop Locust users (10 by default, as in the seed article). With one request served at a
time, a closed loop of N users makes every request wait behind the N - 1 others: mean latency is
about N x the service time and throughput about 1 / service time, which is Little's law
(QPS = N / mean latency) read in both directions. The same law shows that the article's C10
("before": 2.8 s) and C11 ("before": 12 QPS) cannot both come from 10 users: 10 / 2.8 s = 3.6 QPS.

Measured here: the latency distribution (E2E, TTFT, TPOT), requests/s and output tokens/s
(prompt tokens/s apart), the error rate, the server's peak RSS and CPU utilization (its PID
sampled while the load runs), one cold start (spawn -> first successful answer, from the launcher; the
optimized stage's cold-start block starts servers in rounds for C13 and C19), model load time, and cost at
`cost.usd_per_hour` (C14, C15).

The load goes to the stage's endpoint (`endpoints.serve.served`): the reference server, or with
`load.target_url` an endpoint perfkit did not start (vLLM, TGI, llama-server, a cloud API), checked
first by `endpoints.openai.preflight`. What the client measures is the same; what only a process
perfkit started can tell (its RSS and CPU, cold start, model load) is reported as not available,
and the report names the endpoint and the models its /v1/models lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from perfkit.config import Config, Section
from perfkit.endpoints.base import NOT_AVAILABLE
from perfkit.stages.base import MEASURED_DATA, Plot, StageResult, StageSpec

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from perfkit.costs import Cost
    from perfkit.endpoints.base import EndpointFacts
    from perfkit.hardware import ResourceUsage
    from perfkit.load.runner import LoadRun
    from perfkit.serving.launch import ColdStart


class BaselineConfig(Section):
    """The unoptimized deployment (sequential, fp32, REST, no cache) under the closed-loop load."""

    launch_timeout_s: float = Field(180.0, gt=0, le=3600)


STAGE = StageSpec(
    name="baseline",
    budget_s=110,
    title="Baseline: the unoptimized deployment under load",
    description="Sequential scheduler (one request at a time), fp32, REST, no cache, N closed-loop Locust users; "
    "one cold start; cost at the configured instance price.",
    run="perfkit.stages.baseline:run",
    section=BaselineConfig,
    reads=("model", "hardware", "workload", "serving", "load", "cost"),
    data=MEASURED_DATA,
    plots=(Plot("timings", "index", "e2e_s"), Plot("cold_start", "ready_s", "cold_start_s")),
    order=10,
)

SCHEDULER = {"serving.scheduler": "sequential", "serving.max_queue_wait_s": 3600.0}  # every request queues until served

SUMMARY_KEYS = (
    "latency_ms_mean",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "ttft_ms_p50",
    "tpot_ms_p50",
    "throughput_rps",
    "throughput_tok_s",
    "prompt_tok_s",
    "error_rate",
    "peak_rss_mb",
    "cpu_util_pct",
    "peak_cpu_util_pct",
    "cold_start_s",
    "model_load_s",
    "first_response_s",
    "cost_usd_per_1k_req",
    "qps_per_usd_month",
    "usd_per_month",
    "littles_law_max_qps",
    "littles_law_holds",
    "p99_reliable",
    "itl_ms_p50",
    "itl_ms_p50_ci_low",
    "itl_ms_p50_ci_high",
    "itl_ms_p99",
    "itl_ms_p99_ci_low",
    "itl_ms_p99_ci_high",
    "itl_ms_max",
    "ttst_ms_p50",
    "ttst_ms_p50_ci_low",
    "ttst_ms_p50_ci_high",
    "goodput_rps",
    "goodput_pct",
    "goodput_pct_low95",
    "trend_tok_s_pct_per_min",
    "trend",
    "energy",
    "energy_j_per_output_token",
)


@dataclass(frozen=True)
class BaselineResult(StageResult):
    spec = STAGE
    load: LoadRun
    server: ResourceUsage | None  # None: a process perfkit did not start
    warm: ColdStart | None
    cost: Cost
    endpoint: EndpointFacts
    workload: str = "single"  # `workload.kind`: the request stream the load sent

    def variants(self) -> list[dict[str, Any]]:
        """One variant: the endpoint under load, every figure of it."""
        from perfkit.endpoints.serve import server_metrics

        s = self.load.summary
        name = "sequential" if self.endpoint.kind == "perfkit" else self.endpoint.kind
        return [
            s.as_metrics()
            | self.load.energy_metrics()
            | self.cost.as_metrics()
            | server_metrics(self.server, self.warm)
            | self.endpoint.as_metrics()
            | {"users": s.users, "variant": name, "endpoint_models": ", ".join(self.endpoint.models)}
        ]

    def summary(self) -> dict[str, Any]:
        variant = self.variants()[0]
        keys = (*SUMMARY_KEYS, "endpoint", "endpoint_engine", "endpoint_url", "endpoint_models", "endpoint_model", "fixed_output_length")
        summary = {k: variant[k] for k in keys if k in variant}
        summary["users"] = self.load.summary.users
        summary["requests"] = self.load.summary.requests
        summary["workload"] = self.workload
        if self.load.summary.flags:
            summary["load_flags"] = "; ".join(self.load.summary.flags)
        return summary

    def latency(self) -> pd.DataFrame:
        import pandas as pd

        s = self.load.summary
        rows = []
        pooled = (("inter-token latency, gaps pooled", s.itl), ("time to second token", s.ttst))
        dists = (("end-to-end", s.e2e), ("time to first token", s.ttft), ("time per output token", s.tpot))
        for name, lat in dists + tuple((n, q.latency if q else None) for n, q in pooled):
            if lat is not None:
                rows.append(
                    {
                        "measure": name,
                        "count": lat.count,
                        "mean (ms)": lat.mean,
                        "p50 (ms)": lat.p50,
                        "p90 (ms)": lat.p90,
                        "p99 (ms)": lat.p99 if lat.p99_reliable else float("nan"),  # none under P99_MIN_SAMPLES
                        "max (ms)": lat.max,
                        "stdev (ms)": lat.stdev,
                        "CV": lat.cv,
                    }
                )
        return pd.DataFrame(rows)

    def timings(self) -> pd.DataFrame:
        """Every request of the run, warm-up included and marked: the raw data behind each number."""
        import pandas as pd

        rows = [
            {k: v for k, v in r.__dict__.items() if k != "chunk_s"} | {"chunks": len(r.chunk_s), "ttst_s": r.ttst_s}
            for r in self.load.timings
        ]
        return pd.DataFrame(rows)

    def measured(self) -> pd.DataFrame:
        """The requests the figures come from: measured (not warm-up) and answered in full."""
        timings = self.timings()
        return timings[~timings["warmup"] & (timings["status"] == 200)]

    def cold_starts(self) -> pd.DataFrame:
        import pandas as pd

        if self.warm is None:  # an endpoint perfkit did not start
            return pd.DataFrame([{"ready_s": None, "cold_start_s": NOT_AVAILABLE}])
        return pd.DataFrame([self.warm.row()])

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"latency": self.latency(), "timings": self.timings(), "cold_start": self.cold_starts()}

    def load_runs(self) -> dict[str, LoadRun]:
        return {"baseline": self.load}

    def figures(self) -> dict[str, Figure]:
        import matplotlib.pyplot as plt
        import seaborn as sns

        measured = self.measured()
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
        sns.ecdfplot(measured["e2e_s"], ax=left, label="end-to-end")
        sns.ecdfplot(measured["ttft_s"], ax=left, label="time to first token")
        left.set(xlabel="seconds", title="latency distribution")
        left.legend()
        sns.scatterplot(x=measured["t_send"] - measured["t_send"].min(), y=measured["e2e_s"], ax=right)
        right.set(xlabel="send time (s from the first measured request)", ylabel="end-to-end (s)", title="latency over the run")
        fig.tight_layout()
        return {"latency": fig}

    def verdict(self) -> str:
        s = self.load.summary
        mean_s = s.e2e.mean / 1000 if s.e2e else float("nan")
        return f"{s.users} users, sequential: mean {mean_s:.2f} s, {s.throughput_rps:.2f} req/s, {s.throughput_tok_s:.1f} tok/s"

    def conclusion(self) -> str:
        s = self.load.summary
        if s.e2e is None:
            return f"No request succeeded (errors by code: {s.errors_by_code}); nothing here can be compared with C1, C10 or C11."
        mean_s = s.e2e.mean / 1000
        p99 = (
            f"p99 {s.e2e.p99 / 1000:.2f} s"
            if s.p99_reliable
            else f"slowest {s.e2e.max / 1000:.2f} s: {s.e2e.count} requests are too few for a p99"
        )
        cores = self.measured_cores()
        e = self.endpoint
        subject = "the sequential fp32 server" if e.started_by_perfkit else e.describe()
        truncated = f", {s.truncated} answered short of the length asked (truncated)" if s.truncated else ""
        lines = [
            f"At {s.users} closed-loop users {subject} answered {s.ok_requests} of {s.requests} measured requests{truncated} "
            f"with mean latency {mean_s:.2f} s (p50 {s.e2e.p50 / 1000:.2f} s, {p99}), {s.throughput_rps:.2f} req/s and "
            f"{s.throughput_tok_s:.1f} output tokens/s."
        ]
        if self.server is not None:
            lines[0] += (
                f" Its CPU averaged {self.server.cpu_util_pct:.0f}% and peaked at {self.server.peak_cpu_util_pct:.0f}% (100% = one core"
                + (f"; {self.server.peak_cpu_util_pct / cores:.0f}% of the machine's {cores} cores" if cores else "")
                + f"), peak RSS {self.server.peak_rss_mb:.0f} MB."
            )
        else:
            lines.append(f"Its memory, CPU, cold start and model load are {NOT_AVAILABLE}: only the client side is measured.")
        bound = s.littles_law_max_qps
        lines.append(
            f"Little's law: {s.users} users at {mean_s:.2f} s allow at most {bound:.2f} QPS and {s.throughput_rps:.2f} was "
            f"measured ({'consistent' if s.littles_law_holds else 'inconsistent: a timing or bookkeeping error'})."
        )
        if self.warm is not None:
            lines.append(
                f"Cold start (spawn to first answer, one start): {self.warm.cold_start_s:.1f} s, model load "
                f"{self.warm.model_load_s:.2f} s, the first answer after ready {self.warm.first_answer_s * 1000:.0f} ms. The "
                f"optimized stage starts servers in rounds (C13, C19): one start is one draw of a noisy figure."
            )
        if e.started_by_perfkit:  # the configured price is this machine's, not an external endpoint's
            lines.append(
                f"At ${self.cost.usd_per_hour:.2f}/h (${self.cost.usd_per_month:.0f}/month) a 1k requests cost "
                f"${self.cost.cost_usd_per_1k_req:.3f}, and QPS per $ per month is {self.cost.qps_per_usd_month:.4f}."
            )
        from perfkit.load.results import serving_text  # not at import: listing the stages must not load torch

        lines += [text for text in (serving_text(s), self.load.energy.text(self.load.output_tokens)) if text]
        if s.flags:
            lines.append(f"Load run check: {'; '.join(s.flags)}; read the numbers above with that in mind.")
        return "\n\n".join(lines)


def run(cfg: Config) -> BaselineResult:
    """One cold start (with warm-up), then the closed-loop load on that warm server."""
    from tempfile import TemporaryDirectory

    from perfkit import tracking
    from perfkit.costs import cost_of
    from perfkit.endpoints.serve import Watch, served
    from perfkit.load.runner import run_load, served_prompts
    from perfkit.load.workloads import served_stream

    prompts, stream = served_prompts(cfg), served_stream(cfg)
    with served(cfg, overrides=SCHEDULER, warmup=True, timeout_s=cfg.baseline.launch_timeout_s) as endpoint, TemporaryDirectory() as folder:
        with Watch(endpoint, cfg.hardware.sample_interval_s) as watch:
            load = run_load(cfg, endpoint, prompts, Path(folder), stream=stream)
    cost = cost_of(load.summary.throughput_rps, cfg.cost)
    result = BaselineResult(load, watch.usage, endpoint.start, cost, endpoint.facts, cfg.workload.kind)
    tracking.log_variant(result.variants()[0]["variant"], result.variants()[0], {"endpoint": endpoint.facts.describe()} | SCHEDULER)
    return result
