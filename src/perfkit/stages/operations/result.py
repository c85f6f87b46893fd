"""The operations stage's result: alert timing, job-queue latency, neighbour p99, the simulated fleet."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perfkit.measure import interval_text, summary_text
from perfkit.monitoring import rules
from perfkit.stages.base import StageResult
from perfkit.stages.operations import STAGE, OperationsConfig, render
from perfkit.stages.operations.alerts import AlertRun
from perfkit.stages.operations.autoscale import Autoscaling
from perfkit.stages.operations.common import Percentiles
from perfkit.stages.operations.longjobs import CAUSES, Diagnosis, JobVariant, diagnose
from perfkit.stages.operations.neighbours import NeighbourRun, neighbour_summary

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

RSS_FLAT = 1.2  # peak RSS within this x the idle RSS counts as flat memory
_OPS = OperationsConfig()


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    """Numbers that exist only: a missing measurement is a missing key, not NaN in metrics.json."""
    if value is not None and not (isinstance(value, float) and math.isnan(value)):
        out[key] = value


@dataclass(frozen=True)
class OperationsResult(StageResult):
    spec = STAGE
    capacity_rps: float | None
    alerts: AlertRun | None
    jobs: tuple[JobVariant, ...]
    neighbours: tuple[NeighbourRun, ...]
    autoscaling: Autoscaling | None
    load_avg: tuple[float, float]
    submit_slo_ms: float
    fair_share_tolerance: float
    keepup_unserved_share: float = _OPS.keepup_unserved_share
    cpu_full_share: float = _OPS.cpu_full_share
    submit_probe: Percentiles | None = None  # no-op jobs' submit times, >= 100 of them: the submit p99

    def variants(self) -> list[Any]:
        return [*self.jobs, *self.neighbours]

    def _job(self, name: str) -> JobVariant | None:
        return next((j for j in self.jobs if j.variant == name), None)

    def _neighbour(self, name: str) -> NeighbourRun | None:
        return next((n for n in self.neighbours if n.variant == name), None)

    def jobs_diagnosis(self) -> Diagnosis | None:
        """Whether the server kept up with jobs queued, and whether the worker's CPU is why not (None: not run)."""
        none, queued = self._job("none"), self._job("queued")
        if none is None or queued is None:
            return None
        return diagnose(none, queued, self.keepup_unserved_share, self.cpu_full_share)

    # -- summary ---------------------------------------------------------------------------------------
    def _alert_summary(self, out: dict[str, Any]) -> None:
        a = self.alerts
        if a is None:
            return
        out["alerts_status"] = a.status if a.status == "ok" else f"skipped: {a.reason}"
        if a.status != "ok":
            return
        fire, resolve = a.fire_delay_s(rules.ERROR_ALERT), a.resolve_delay_s(rules.ERROR_ALERT)
        _put(out, "error_alert_fire_s", fire)
        _put(out, "error_alert_resolve_s", resolve)
        after_errors = a.fire_after_errors_s(rules.ERROR_ALERT)
        _put(out, "error_alert_after_first_error_s", after_errors)
        out["alert_bound_s"] = a.bound_s
        out["error_alert_within_bound"] = after_errors is not None and after_errors <= a.bound_s
        out["false_alerts"] = a.false_alerts
        out["error_alert_behaves"] = fire is not None and a.false_alerts == 0 and resolve is not None
        out["alert_max_queue_wait_s"] = a.max_queue_wait_s
        out["queue_alert_cap_requests"] = a.queue_cap
        _put(out, "queue_depth_max", a.max_queue_depth)
        out["queue_alert_possible"] = a.queue_alert_possible
        _put(out, "queue_alert_fire_s", a.fire_delay_s(rules.QUEUE_ALERT))

    def _job_summary(self, out: dict[str, Any]) -> None:
        none = self._job("none")
        for j in self.jobs:
            for name, p in (("ttft", j.short_ttft), ("e2e", j.short_e2e)):
                if p is None:
                    continue
                out[f"short_{name}_ms_p50_{j.variant}"] = p.p50_ms
                _put(out, f"short_{name}_ms_p90_{j.variant}", p.p90_ms)
                out[f"short_{name}_count_{j.variant}"] = p.count
                if p.reliable:  # a p99 from fewer than 100 requests is one of its largest few: not reported
                    out[f"short_{name}_ms_p99_{j.variant}"] = p.p99_ms
                    out[f"short_{name}_ms_p99_{j.variant}_ci_low"] = p.p99_ci_low_ms
                    out[f"short_{name}_ms_p99_{j.variant}_ci_high"] = p.p99_ci_high_ms
                base = getattr(none, f"short_{name}") if none is not None and j.variant != "none" else None
                for q in (50, 90) if base is not None else ():
                    value, low, high = p.over(base, q)
                    key = f"short_{name}_p{q}_{j.variant}_vs_none"
                    _put(out, key, value)
                    if low is not None:
                        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = low, high
            if j.variant != "none":
                out[f"jobs_per_min_{j.variant}"] = j.jobs_per_min
            if j.short_requests:
                v = f"jobs_{j.variant}"
                out[f"{v}_window_s"] = j.arrival_s
                out[f"{v}_short_offered_rps"] = j.offered_rps
                out[f"{v}_short_arrived_rps"] = j.arrived_rps
                out[f"{v}_short_achieved_rps"] = j.achieved_rps
                out[f"{v}_short_unserved_pct"] = 100 * j.unserved_share
                out[f"{v}_short_kept_up"] = j.kept_up(self.keepup_unserved_share)
                for part in ("server", "worker", "machine"):
                    _put(out, f"{v}_{part}_cpu_share_pct", j.cpu_share_pct(getattr(j, f"{part}_cpu_s")))
        diagnosis = self.jobs_diagnosis()
        if diagnosis is not None:
            out["jobs_queued_cause"] = diagnosis.cause
        queued = self._job("queued")
        submit = self.submit_probe or (queued.submit if queued is not None else None)
        if queued is not None and submit is not None:
            out["job_submit_source"] = "no-op probe" if self.submit_probe else "the queued variant's jobs"
            out["job_submit_ms_p50"] = submit.p50_ms
            out["job_submit_count"] = submit.count
            # C9 is judged on the p99 only from >= 100 submissions; below that, on the max (which bounds it).
            out["job_submit_statistic"] = "p99" if submit.reliable else "max"
            out["job_submit_reliable"] = submit.reliable
            out["job_submit_ms_tail"] = submit.bound_ms
            if submit.reliable:
                out["job_submit_ms_p99"] = submit.p99_ms
                out["job_submit_ms_tail_ci_low"] = submit.p99_ci_low_ms
                out["job_submit_ms_tail_ci_high"] = submit.p99_ci_high_ms
            _put(out, "job_queue_wait_s_mean", queued.queue_wait_s_mean)
        inline = self._job("inline")
        if inline is not None and inline.submit is not None:
            out["job_inline_response_ms_p50"] = inline.submit.p50_ms


    def _autoscaling_summary(self, out: dict[str, Any]) -> None:
        s = self.autoscaling
        if s is None:
            return
        out |= s.fixed.as_metrics() | s.hpa.as_metrics()
        out["utilization_lift_pct_points"] = s.lift_pct_points
        out["fixed_replicas"] = s.fixed_replicas
        out["replica_capacity_rps"] = s.capacity_rps
        out["replica_cold_start_s"] = s.cold_start_s
        out["autoscaling_inputs"] = s.source

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"load_avg_start": self.load_avg[0], "load_avg_end": self.load_avg[1]}
        _put(out, "capacity_rps", self.capacity_rps)
        self._alert_summary(out)
        self._job_summary(out)
        out |= neighbour_summary(self.neighbours, RSS_FLAT)
        self._autoscaling_summary(out)
        return out

    # -- tables and figures ------------------------------------------------------------------------------
    def tables(self) -> dict[str, pd.DataFrame]:
        import pandas as pd

        # The plotted tables exist even when their part did not run (empty, with their columns): DVC plots them.
        out: dict[str, pd.DataFrame] = {
            "overview": pd.DataFrame(self._overview(), columns=["part", "figure", "value", "target"]),
            "jobs": pd.DataFrame([j.row() for j in self.jobs], columns=list(JobVariant.empty("none").row())),
            "neighbours": pd.DataFrame([n.row() for n in self.neighbours],
                                       columns=list(NeighbourRun.empty("alone").row())),
        }
        a = self.alerts
        if a is not None and a.status == "ok":
            out["alert_series"] = pd.DataFrame(
                [{"t_s": t, "series": name, "value": v} for name, pts in a.series.items() for t, v in pts]
            )
            out["alert_intervals"] = pd.DataFrame(
                [{"alert": name, "start_s": s, "end_s": e} for name, spans in a.firing.items() for s, e in spans],
                columns=["alert", "start_s", "end_s"],
            )
        s = self.autoscaling
        out["autoscaling"] = pd.DataFrame(
            [{"fleet": r.name, "hour": t / 3600, "replicas": n, "cpu_pct": 100 * cpu, "load_replicas": load}
             for r in ((s.fixed, s.hpa) if s else ()) for t, n, cpu, load in r.timeline],
            columns=["fleet", "hour", "replicas", "cpu_pct", "load_replicas"],
        )
        return out

    def _overview(self) -> list[tuple[str, str, Any, str]]:
        """The headline figures a reader looks at first, one row each, with what they are held against."""
        s = self.summary()
        rows = [
            ("alerts", "error-rate alert fired after the overload began (s)", s.get("error_alert_fire_s"), ""),
            ("alerts", "error-rate alert fired after the first refused answer (s)",
             s.get("error_alert_after_first_error_s"), f"<= {s.get('alert_bound_s', float('nan')):.0f} s (3 scrapes + for:)"),
            ("alerts", "alerts fired under normal load", s.get("false_alerts"), "0"),
            ("alerts", "error-rate alert resolved after the overload ended (s)", s.get("error_alert_resolve_s"), "resolves"),
            ("alerts", "requests the queue bound lets wait", s.get("queue_alert_cap_requests"),
             f"> {self.alerts.thresholds.queue_depth if self.alerts else 50} for the queue alert"),
            ("jobs", f"job submit {s.get('job_submit_statistic', 'p99')} (ms, {s.get('job_submit_count', 0)} submissions)",
             s.get("job_submit_ms_tail"), f"< {self.submit_slo_ms:g} ms (C9)"),
            ("jobs", "short TTFT p50, jobs inline / no jobs", s.get("short_ttft_p50_inline_vs_none"), "<= 1.1 (C9)"),
            ("jobs", "short TTFT p50, jobs queued / no jobs", s.get("short_ttft_p50_queued_vs_none"), "<= 1.1 (C9)"),
            ("jobs", "short requests served with jobs queued (req/s)", s.get("jobs_queued_short_achieved_rps"),
             f"arrived {s.get('jobs_queued_short_arrived_rps', float('nan')):.2f}"),
            ("jobs", "worker CPU with jobs queued (% of the cores)", s.get("jobs_queued_worker_cpu_share_pct"),
             f"cause: {s.get('jobs_queued_cause', '')}"),
            ("neighbours", "quiet p99 with a burster, FIFO / alone", s.get("quiet_p99_vs_alone_fifo"), ""),
            ("neighbours", "quiet p99 with a burster, fair / alone", s.get("quiet_p99_vs_alone_fair"), ""),
            ("neighbours", "quiet p99 with a burster, fair + C8's bucket / alone (pooled over rounds)",
             s.get("quiet_p99_vs_alone_fair_bucket"), f"<= {self.fair_share_tolerance:g} (C8)"),
            ("neighbours", "burster requests refused with 429 (token bucket)", s.get("burst_429"), "> 0, with Retry-After"),
            ("autoscaling", "utilization, fleet sized for the peak (%, simulated)", s.get("fixed_utilization_pct"), "C3: 70"),
            ("autoscaling", "utilization with the HPA (%, simulated)", s.get("hpa_utilization_pct"), "C3: 88"),
        ]
        return [r for r in rows if r[2] is not None]

    def figures(self) -> dict[str, Figure]:
        return render.figures(self)

    # -- conclusion ------------------------------------------------------------------------------------
    def conclusion(self) -> str:
        parts = [p for p in (self._alerts_text(), self._jobs_text(), self._neighbours_text(), self._autoscaling_text()) if p]
        parts.append(f"Load average {self.load_avg[0]:.1f} at the start, {self.load_avg[1]:.1f} at the end.")
        return "\n\n".join(parts)

    def _alerts_text(self) -> str:
        a = self.alerts
        if a is None:
            return ""
        if a.status != "ok":
            return f"Alerts were not measured: {a.reason}."
        s = self.summary()
        fire = s.get("error_alert_fire_s")
        quiet = "No alert fired under normal load; under overload" if a.false_alerts == 0 else (
            f"{a.false_alerts} alert(s) fired under normal load (false alerts); under overload")
        text = [f"{quiet} "
                + (f"the error-rate alert fired {fire:.1f} s after the overload began, "
                   f"{s.get('error_alert_after_first_error_s', float('nan')):.1f} s after its first refused answer "
                   f"(bound: 3 scrapes + for: = {a.bound_s:.0f} s)" if fire is not None
                   else "the error-rate alert never fired under overload")]
        resolve = s.get("error_alert_resolve_s")
        text.append(f"and resolved {resolve:.1f} s after it ended." if resolve is not None else "and had not resolved.")
        if a.queue_alert_possible:
            qf = s.get("queue_alert_fire_s")
            text.append(f"The alerts' server queues up to {a.max_queue_wait_s:.0f} s of work, about {a.queue_cap:.0f} "
                        f"requests (max_queue_wait_s x capacity); the "
                        f"queue peaked at {a.max_queue_depth:.0f} and the queue alert "
                        + (f"fired after {qf:.1f} s." if qf is not None else "did not fire."))
        else:
            text.append(f"The queue alert cannot fire at these settings: the queue bound lets only about "
                        f"{a.queue_cap:.0f} requests wait ({a.max_queue_wait_s:.0f} s x capacity), under the threshold of "
                        f"{a.thresholds.queue_depth}.")
        if not a.gpu_exported:
            text.append("The accelerator-memory rule is tested with promtool only: no GPU here, so no memory gauge.")
        return " ".join(t for t in text if t)

    def _jobs_text(self) -> str:
        none, inline, queued = self._job("none"), self._job("inline"), self._job("queued")
        if not (none and inline and queued and queued.submit and none.short_e2e and inline.short_e2e and queued.short_e2e
                and none.short_ttft and inline.short_ttft and queued.short_ttft):
            return ""
        submit = self.submit_probe or queued.submit
        ok = submit.bound_ms < self.submit_slo_ms
        tail = "at p99" if submit.reliable else "at most (the max: too few submissions for a p99)"
        return (
            f"Queued, a job is submitted in {submit.bound_ms:.0f} ms {tail} ({'under' if ok else 'over'} "
            f"{self.submit_slo_ms:.0f} ms, from {submit.count} submissions); inline, the client waits "
            f"{inline.submit.p50_ms / 1000 if inline.submit else float('nan'):.1f} s for the whole job. The short "
            f"requests' TTFT p50 was {none.short_ttft.p50_ms:.0f} ms without jobs, {inline.short_ttft.p50_ms:.0f} ms with "
            f"jobs inline and {queued.short_ttft.p50_ms:.0f} ms with jobs queued (E2E p90 {none.short_e2e.p90_ms:.0f}, "
            f"{inline.short_e2e.p90_ms:.0f} and {queued.short_e2e.p90_ms:.0f} ms; {none.short_e2e.count}, "
            f"{inline.short_e2e.count} and {queued.short_e2e.count} requests). The worker runs on the same cores "
            "as the server (niced): a queue moves the job out of the request path, it does not add cores. "
            + self._jobs_cpu_text()
        )

    def _served(self, j: JobVariant) -> str:
        cpu = " ".join(f"{part} {share:.0f}%," for part in ("server", "worker") if
                       (share := j.cpu_share_pct(getattr(j, f"{part}_cpu_s"))) is not None)
        busy = j.cpu_share_pct(j.machine_cpu_s)
        machine = f"; {cpu} all processes {busy:.0f}% of the {j.cores} cores" if busy is not None else ""
        return (f"{j.achieved_rps:.2f} of the {j.arrived_rps:.2f} req/s that arrived ({j.unserved} of the {j.short_requests - 1} "
                f"sent before the last arrival not answered by it, {j.waiting} of them still waiting" + machine + ")")

    def _jobs_cpu_text(self) -> str:
        """Whether the server kept up in each variant and, with jobs queued, what the CPU figures say about why."""
        d, none, inline, queued = self.jobs_diagnosis(), self._job("none"), self._job("inline"), self._job("queued")
        if d is None or none is None or inline is None or queued is None or not queued.arrival_s:
            return ""
        text = [f"The short requests were offered at {queued.offered_rps:.2f} req/s (Poisson arrivals). Over each "
                f"variant's arrival window the server served {self._served(none)} without jobs, "
                f"{self._served(inline)} with jobs inline and {self._served(queued)} with jobs queued; it counts as "
                f"keeping up while at most {100 * self.keepup_unserved_share:.0f}% are not answered."]
        worker = queued.cpu_share_pct(queued.worker_cpu_s) or 0.0
        busy = queued.cpu_share_pct(queued.machine_cpu_s) or 0.0
        full = 100 * self.cpu_full_share
        inline_kept = inline.kept_up(self.keepup_unserved_share)
        if d.cause == "worker_cpu":
            text.append(f"With jobs queued the worker used {worker:.0f}% of the {queued.cores} cores and the server served "
                        f"{queued.achieved_rps:.2f} of the {queued.arrived_rps:.2f} req/s that arrived, so "
                        + ("its queue grew for the whole window" if 2 * queued.waiting >= queued.unserved else
                           "its admission bound refused the excess it could not queue")
                        + f": all processes used {busy:.0f}% of the cores, {busy - worker:.0f}% without the "
                        f"worker (full from {full:.0f}%).")
            if inline_kept:
                text.append("Inline, the same jobs' decode steps shared the server's batches and it kept up: on these "
                            "cores the queue moved the jobs' work out of the batch into a separate, unbatched generation.")
        elif d.cause == "cpu_full_without_worker":
            text.append(f"With jobs queued the server fell behind while the cores were full ({busy:.0f}%) even without "
                        f"the worker's {worker:.0f}%: other processes (the load generator, other tenants) took the rest, "
                        "so the worker alone does not explain it.")
        elif d.cause == "not_cpu":
            text.append(f"With jobs queued the server fell behind while all processes used only {busy:.0f}% of the cores "
                        f"(worker {worker:.0f}%): CPU shares do not explain it; what slowed the server is not measured here.")
        elif d.cause == "kept_up" and queued.short_e2e and inline.short_e2e and queued.short_e2e.p90_ms > inline.short_e2e.p90_ms:
            text.append("With jobs queued the server kept up, so its higher p90 than inline is not explained by a "
                        "growing queue.")
        elif d.cause in ("load_too_high", "unmeasured"):
            text.append(CAUSES[d.cause][0].upper() + CAUSES[d.cause][1:] + ".")
        isolated = self._job("isolated")
        if isolated is not None and not isolated.isolated:
            text.append("The isolated variant could not isolate the worker: one core is all there is.")
        elif isolated is not None and isolated.short_ttft is not None and none.short_ttft is not None:
            ratio = interval_text(*isolated.short_ttft.over(none.short_ttft, 50), fmt=".2f", unit="x")
            text.append(f"With the worker isolated (its own core at nice 19, the server's threads, as many as before, on "
                        f"the other {isolated.cores - 1}), the short requests' TTFT p50 was {isolated.short_ttft.p50_ms:.0f} "
                        f"ms, {ratio} no jobs; the server served {self._served(isolated)}.")
        return " ".join(text)

    def _neighbours_text(self) -> str:
        s = self.summary()
        fifo, fair, limited = self._neighbour("fifo"), self._neighbour("fair"), self._neighbour("fair+bucket")
        if not (fifo and fair and limited and "quiet_p99_ms_alone" in s and "quiet_p99_vs_alone_fair_bucket" in s):
            return ""
        sent = sum(n.burst_sent for n in self.neighbours if n.variant == "fair+bucket")
        text = (
            f"With a burster at 10x its share, over {s['neighbour_rounds']} interleaved rounds the nine quiet clients' p99 "
            f"was {s['quiet_p99_ms_alone']:.0f} ms alone ({s['quiet_requests_alone']} requests) and "
            f"{s['quiet_p99_ms_fair_bucket']:.0f} ms beside it under fair queueing with C8's bucket ({limited.bucket}; "
            f"{s['quiet_requests_fair_bucket']} requests): {summary_text(s, 'quiet_p99_vs_alone_fair_bucket', '.2f', 'x')} alone, "
            f"target within {self.fair_share_tolerance:g}x. The bucket refused {s['burst_429']} of the burster's {sent} "
            f"requests with 429 ({s['burst_429_with_retry_after']} with Retry-After). Once each, as context: FIFO "
            f"{fifo.quiet.p99_ms if fifo.quiet else float('nan'):.0f} ms and fair queueing with a request-counted bucket "
            f"({fair.queueing}) {fair.quiet.p99_ms if fair.quiet else float('nan'):.0f} ms ({fifo.quiet.count if fifo.quiet else 0} "
            f"requests each: a p99 from fewer than 100 is near the largest value); the request-counted bucket ({fifo.bucket}) "
            f"refused {fifo.burst_429}."
        )
        if not s.get("quiet_p99_reliable"):
            text += " (C8's p99s come from fewer than 100 requests: indicative only.)"
        return text

    def _autoscaling_text(self) -> str:
        s = self.autoscaling
        if s is None:
            return ""
        return (
            f"Simulated (not a cluster): over the day's trace, a fleet of {s.fixed_replicas} replicas sized for the peak "
            f"ran at {100 * s.fixed.utilization:.0f}% utilization and the HPA at {100 * s.hpa.utilization:.0f}% "
            f"({s.lift_pct_points:+.0f} points), p99 {s.fixed.latency_s_p99:.1f} s against {s.hpa.latency_s_p99:.1f} s, "
            f"{s.hpa.pod_hours:.0f} pod-hours against {s.fixed.pod_hours:.0f}; per-replica capacity and cold start "
            f"from {s.source}."
        )
