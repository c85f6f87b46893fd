"""The operations stage's rendering: figures (alert timeline, short requests with and without the queue, neighbours,
fleet) and the conclusion, computed from the result's numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from perfkit.measure import interval_text, summary_text
from perfkit.monitoring import rules
from perfkit.stages.operations.longjobs import CAUSES, JobVariant

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from perfkit.stages.operations.result import OperationsResult


def figures(result: OperationsResult) -> dict[str, Figure]:
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    tables = result.tables()
    out: dict[str, Any] = {}
    a = result.alerts
    if a is not None and a.status == "ok":
        fig, axes = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
        limits = {"queue depth": a.thresholds.queue_depth, "error ratio": a.thresholds.error_ratio}
        alert_of = {"queue depth": rules.QUEUE_ALERT, "error ratio": rules.ERROR_ALERT}
        end = a.phases[3] - a.phases[0]
        for ax, (name, pts) in zip(axes, a.series.items()):
            ax.plot([t for t, _ in pts], [v for _, v in pts], label=name)
            ax.axhline(limits[name], color="red", linestyle="--", label="threshold")
            for s, e in a.firing.get(alert_of[name], []):
                ax.axvspan(s, end if e is None else e, color="red", alpha=0.15, label="firing")
            ax.axvspan(a.phases[1] - a.phases[0], a.phases[2] - a.phases[0], color="grey", alpha=0.1, label="overload")
            ax.set_ylabel(name)
            ax.legend(loc="upper right", fontsize=8)
        axes[-1].set_xlabel("seconds since the normal phase began")
        fig.suptitle("Alerts in a real Prometheus: series, thresholds, firing")
        fig.tight_layout()
        out["alert_timeline"] = fig
    if len(tables["jobs"]):
        frame = tables["jobs"].melt(id_vars="variant", value_vars=["ttft_p99_ms", "e2e_p99_ms"], var_name="metric", value_name="ms")
        fig, (ax, cpu_ax) = plt.subplots(1, 2, figsize=(12, 4))
        sns.barplot(frame, x="variant", y="ms", hue="metric", ax=ax)
        ax.set_title("Short requests' p99 without jobs, with jobs inline, queued, queued with the worker isolated", fontsize=10)
        _cpu_shares(tables["jobs"], cpu_ax)
        fig.tight_layout()
        out["jobs"] = fig
    if len(tables["neighbours"]):
        s = result.summary()  # the p99s pooled over each variant's rounds: what C8 is judged on
        variants = list(dict.fromkeys(tables["neighbours"]["variant"]))
        pooled = [(v, s.get(f"quiet_p99_ms_{v.replace('+', '_')}"), s.get(f"quiet_requests_{v.replace('+', '_')}")) for v in variants]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar([f"{v}\n({n} requests)" for v, _, n in pooled], [p for _, p, _ in pooled], color="steelblue")
        if s.get("quiet_p99_ms_alone"):
            ax.axhline(
                s["quiet_p99_ms_alone"] * result.fair_share_tolerance,
                color="red",
                linestyle="--",
                label=f"{result.fair_share_tolerance:g}x alone",
            )
            ax.legend()
        ax.set(ylabel="quiet clients' p99 (ms)", title="The nine quiet clients' p99 with a burster at 10x its share (pooled over rounds)")
        fig.tight_layout()
        out["neighbours"] = fig
    if len(tables["autoscaling"]):
        frame = tables["autoscaling"]
        fig, axes = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
        sns.lineplot(frame, x="hour", y="replicas", hue="fleet", ax=axes[0], drawstyle="steps-post")
        hpa = frame[frame["fleet"] == "hpa"]
        axes[0].plot(hpa["hour"], hpa["load_replicas"], color="grey", linestyle=":", label="load (replicas' worth)")
        axes[0].legend(fontsize=8)
        sns.lineplot(frame, x="hour", y="cpu_pct", hue="fleet", ax=axes[1])
        axes[1].set_ylabel("CPU utilization %")
        fig.suptitle("Simulated: a fleet sized for the peak against an HPA over the day")
        fig.tight_layout()
        out["autoscaling"] = fig
    return out


def _cpu_shares(jobs: Any, ax: Any) -> None:
    """Stacked CPU shares per job variant: the server's tree, the worker's tree, everything else on the machine."""
    shares = jobs.set_index("variant")[["server_cpu_share_pct", "worker_cpu_share_pct", "machine_cpu_share_pct"]]
    shares = shares.astype(float).fillna(0.0)
    other = (shares["machine_cpu_share_pct"] - shares["server_cpu_share_pct"] - shares["worker_cpu_share_pct"]).clip(lower=0)
    bottom = 0.0
    for label, values in (
        ("server", shares["server_cpu_share_pct"]),
        ("worker", shares["worker_cpu_share_pct"]),
        ("other processes", other),
    ):
        ax.bar(shares.index, values, bottom=bottom, label=label)
        bottom = bottom + values
    ax.axhline(100, color="black", linewidth=0.8)
    ax.set_ylabel("% of the cores over the arrival window")
    ax.set_title("Who used the cores while the short requests arrived", fontsize=10)
    ax.legend(fontsize=8)


def conclusion(r: OperationsResult) -> str:
    """Alerts, the job queue, the neighbours and the simulated fleet, each in its own paragraph."""
    parts = [p for p in (_alerts_text(r), _jobs_text(r), _neighbours_text(r), _autoscaling_text(r)) if p]
    parts.append(f"Load average {r.load_avg[0]:.1f} at the start, {r.load_avg[1]:.1f} at the end.")
    return "\n\n".join(parts)


def _alerts_text(r: OperationsResult) -> str:
    a = r.alerts
    if a is None:
        return ""
    if a.status != "ok":
        return f"Alerts were not measured: {a.reason}."
    s = r.summary()
    fire = s.get("error_alert_fire_s")
    quiet = (
        "No alert fired under normal load; under overload"
        if a.false_alerts == 0
        else (f"{a.false_alerts} alert(s) fired under normal load (false alerts); under overload")
    )
    text = [
        f"{quiet} "
        + (
            f"the error-rate alert fired {fire:.1f} s after the overload began, "
            f"{s.get('error_alert_after_first_error_s', float('nan')):.1f} s after its first refused answer "
            f"(bound: 3 scrapes + for: = {a.bound_s:.0f} s)"
            if fire is not None
            else "the error-rate alert never fired under overload"
        )
    ]
    resolve = s.get("error_alert_resolve_s")
    text.append(f"and resolved {resolve:.1f} s after it ended." if resolve is not None else "and had not resolved.")
    if a.queue_alert_possible:
        qf = s.get("queue_alert_fire_s")
        text.append(
            f"The alerts' server queues up to {a.max_queue_wait_s:.0f} s of work, about {a.queue_cap:.0f} "
            f"requests (max_queue_wait_s x capacity); the "
            f"queue peaked at {a.max_queue_depth:.0f} and the queue alert "
            + (f"fired after {qf:.1f} s." if qf is not None else "did not fire.")
        )
    else:
        text.append(
            f"The queue alert cannot fire at these settings: the queue bound lets only about "
            f"{a.queue_cap:.0f} requests wait ({a.max_queue_wait_s:.0f} s x capacity), under the threshold of "
            f"{a.thresholds.queue_depth}."
        )
    if not a.gpu_exported:
        text.append("The accelerator-memory rule is tested with promtool only: no GPU here, so no memory gauge.")
    return " ".join(t for t in text if t)


def _jobs_text(r: OperationsResult) -> str:
    none, inline, queued = r._job("none"), r._job("inline"), r._job("queued")
    if not (
        none
        and inline
        and queued
        and queued.submit
        and none.short_e2e
        and inline.short_e2e
        and queued.short_e2e
        and none.short_ttft
        and inline.short_ttft
        and queued.short_ttft
    ):
        return ""
    submit = r.submit_probe or queued.submit
    ok = submit.bound_ms < r.submit_slo_ms
    tail = "at p99" if submit.reliable else "at most (the max: too few submissions for a p99)"
    failed = f"The isolated variant was not measured: its server did not start ({r.isolated_failure})." if r.isolated_failure else ""
    shared = (
        f"Queued, a job is submitted in {submit.bound_ms:.0f} ms {tail} ({'under' if ok else 'over'} "
        f"{r.submit_slo_ms:.0f} ms, from {submit.count} submissions); inline, the client waits "
        f"{inline.submit.p50_ms / 1000 if inline.submit else float('nan'):.1f} s for the whole job. The short "
        f"requests' TTFT p50 was {none.short_ttft.p50_ms:.0f} ms without jobs, {inline.short_ttft.p50_ms:.0f} ms with "
        f"jobs inline and {queued.short_ttft.p50_ms:.0f} ms with jobs queued (E2E p90 {none.short_e2e.p90_ms:.0f}, "
        f"{inline.short_e2e.p90_ms:.0f} and {queued.short_e2e.p90_ms:.0f} ms; {none.short_e2e.count}, "
        f"{inline.short_e2e.count} and {queued.short_e2e.count} requests). The worker runs on the same cores "
        "as the server (niced): a queue moves the job out of the request path, it does not add cores."
    )
    return " ".join(part for part in (shared, _jobs_cpu_text(r), failed) if part)


def _served(j: JobVariant) -> str:
    cpu = " ".join(
        f"{part} {share:.0f}%," for part in ("server", "worker") if (share := j.cpu_share_pct(getattr(j, f"{part}_cpu_s"))) is not None
    )
    busy = j.cpu_share_pct(j.machine_cpu_s)
    machine = f"; {cpu} all processes {busy:.0f}% of the {j.cores} cores" if busy is not None else ""
    return (
        f"{j.achieved_rps:.2f} of the {j.arrived_rps:.2f} req/s that arrived ({j.unserved} of the {j.short_requests - 1} "
        f"sent before the last arrival not answered by it, {j.waiting} of them still waiting" + machine + ")"
    )


def _jobs_cpu_text(r: OperationsResult) -> str:
    """Whether the server kept up in each variant and, with jobs queued, what the CPU figures say about why."""
    d, none, inline, queued = r.jobs_diagnosis(), r._job("none"), r._job("inline"), r._job("queued")
    if d is None or none is None or inline is None or queued is None or not queued.arrival_s:
        return ""
    text = [
        f"The short requests were offered at {queued.offered_rps:.2f} req/s (Poisson arrivals). Over each "
        f"variant's arrival window the server served {_served(none)} without jobs, "
        f"{_served(inline)} with jobs inline and {_served(queued)} with jobs queued; it counts as "
        f"keeping up while at most {100 * r.keepup_unserved_share:.0f}% are not answered."
    ]
    worker = queued.cpu_share_pct(queued.worker_cpu_s) or 0.0
    busy = queued.cpu_share_pct(queued.machine_cpu_s) or 0.0
    full = 100 * r.cpu_full_share
    inline_kept = inline.kept_up(r.keepup_unserved_share)
    if d.cause == "worker_cpu":
        text.append(
            f"With jobs queued the worker used {worker:.0f}% of the {queued.cores} cores and the server served "
            f"{queued.achieved_rps:.2f} of the {queued.arrived_rps:.2f} req/s that arrived, so "
            + (
                "its queue grew for the whole window"
                if 2 * queued.waiting >= queued.unserved
                else "its admission bound refused the excess it could not queue"
            )
            + f": all processes used {busy:.0f}% of the cores, {busy - worker:.0f}% without the "
            f"worker (full from {full:.0f}%)."
        )
        if inline_kept:
            text.append(
                "Inline, the same jobs' decode steps shared the server's batches and it kept up: on these "
                "cores the queue moved the jobs' work out of the batch into a separate, unbatched generation."
            )
    elif d.cause == "cpu_full_without_worker":
        text.append(
            f"With jobs queued the server fell behind while the cores were full ({busy:.0f}%) even without "
            f"the worker's {worker:.0f}%: other processes (the load generator, other tenants) took the rest, "
            "so the worker alone does not explain it."
        )
    elif d.cause == "not_cpu":
        text.append(
            f"With jobs queued the server fell behind while all processes used only {busy:.0f}% of the cores "
            f"(worker {worker:.0f}%): CPU shares do not explain it; what slowed the server is not measured here."
        )
    elif d.cause == "kept_up" and queued.short_e2e and inline.short_e2e and queued.short_e2e.p90_ms > inline.short_e2e.p90_ms:
        text.append("With jobs queued the server kept up, so its higher p90 than inline is not explained by a growing queue.")
    elif d.cause in ("load_too_high", "unmeasured"):
        text.append(CAUSES[d.cause][0].upper() + CAUSES[d.cause][1:] + ".")
    isolated = r._job("isolated")
    if isolated is not None and not isolated.isolated:
        text.append("The isolated variant could not isolate the worker: one core is all there is.")
    elif isolated is not None and isolated.short_ttft is not None and none.short_ttft is not None:
        ratio = interval_text(*isolated.short_ttft.over(none.short_ttft, 50), fmt=".2f", unit="x")
        text.append(
            f"With the worker isolated (its own core at nice 19; a server of its own, with one torch thread per core "
            f"left, on the other {isolated.cores - 1}), the short requests' TTFT p50 was {isolated.short_ttft.p50_ms:.0f} "
            f"ms, {ratio} no jobs; the server served {_served(isolated)}."
        )
    return " ".join(text)


def _neighbours_text(r: OperationsResult) -> str:
    s = r.summary()
    fifo, fair, limited = r._neighbour("fifo"), r._neighbour("fair"), r._neighbour("fair+bucket")
    if not (fifo and fair and limited and "quiet_p99_ms_alone" in s and "quiet_p99_vs_alone_fair_bucket" in s):
        return ""
    sent = sum(n.burst_sent for n in r.neighbours if n.variant == "fair+bucket")
    text = (
        f"With a burster at 10x its share, over {s['neighbour_rounds']} interleaved rounds the nine quiet clients' p99 "
        f"was {s['quiet_p99_ms_alone']:.0f} ms alone ({s['quiet_requests_alone']} requests) and "
        f"{s['quiet_p99_ms_fair_bucket']:.0f} ms beside it under fair queueing with C8's bucket ({limited.bucket}; "
        f"{s['quiet_requests_fair_bucket']} requests): {summary_text(s, 'quiet_p99_vs_alone_fair_bucket', '.2f', 'x')} alone, "
        f"target within {r.fair_share_tolerance:g}x. The bucket refused {s['burst_429']} of the burster's {sent} "
        f"requests with 429 ({s['burst_429_with_retry_after']} with Retry-After). Once each, as context: FIFO "
        f"{fifo.quiet.p99_ms if fifo.quiet else float('nan'):.0f} ms and fair queueing with a request-counted bucket "
        f"({fair.queueing}) {fair.quiet.p99_ms if fair.quiet else float('nan'):.0f} ms ({fifo.quiet.count if fifo.quiet else 0} "
        f"requests each: a p99 from fewer than 100 is near the largest value); the request-counted bucket ({fifo.bucket}) "
        f"refused {fifo.burst_429}."
    )
    if not s.get("quiet_p99_reliable"):
        text += " (C8's p99s come from fewer than 100 requests: indicative only.)"
    return text


def _autoscaling_text(r: OperationsResult) -> str:
    s = r.autoscaling
    if s is None:
        return ""
    return (
        f"Simulated (not a cluster): over the day's trace, a fleet of {s.fixed_replicas} replicas sized for the peak "
        f"ran at {100 * s.fixed.utilization:.0f}% utilization and the HPA at {100 * s.hpa.utilization:.0f}% "
        f"({s.lift_pct_points:+.0f} points), p99 {s.fixed.latency_s_p99:.1f} s against {s.hpa.latency_s_p99:.1f} s, "
        f"{s.hpa.pod_hours:.0f} pod-hours against {s.fixed.pod_hours:.0f}; per-replica capacity and cold start "
        f"from {s.source}."
    )
