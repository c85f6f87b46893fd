"""The operations stage's figures: alert timeline, short requests with and without the queue, neighbours, fleet."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from perfkit.monitoring import rules

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
        frame = tables["jobs"].melt(id_vars="variant", value_vars=["ttft_p99_ms", "e2e_p99_ms"], var_name="metric",
                                    value_name="ms")
        fig, (ax, cpu_ax) = plt.subplots(1, 2, figsize=(12, 4))
        sns.barplot(frame, x="variant", y="ms", hue="metric", ax=ax)
        ax.set_title("Short requests' p99 without jobs, with jobs inline, queued, queued with the worker isolated",
                     fontsize=10)
        _cpu_shares(tables["jobs"], cpu_ax)
        fig.tight_layout()
        out["jobs"] = fig
    if len(tables["neighbours"]):
        s = result.summary()  # the p99s pooled over each variant's rounds: what C8 is judged on
        variants = list(dict.fromkeys(tables["neighbours"]["variant"]))
        pooled = [(v, s.get(f"quiet_p99_ms_{v.replace('+', '_')}"), s.get(f"quiet_requests_{v.replace('+', '_')}"))
                  for v in variants]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar([f"{v}\n({n} requests)" for v, _, n in pooled], [p for _, p, _ in pooled], color="steelblue")
        if s.get("quiet_p99_ms_alone"):
            ax.axhline(s["quiet_p99_ms_alone"] * result.fair_share_tolerance, color="red", linestyle="--",
                       label=f"{result.fair_share_tolerance:g}x alone")
            ax.legend()
        ax.set(ylabel="quiet clients' p99 (ms)",
               title="The nine quiet clients' p99 with a burster at 10x its share (pooled over rounds)")
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
    for label, values in (("server", shares["server_cpu_share_pct"]), ("worker", shares["worker_cpu_share_pct"]),
                          ("other processes", other)):
        ax.bar(shares.index, values, bottom=bottom, label=label)
        bottom = bottom + values
    ax.axhline(100, color="black", linewidth=0.8)
    ax.set_ylabel("% of the cores over the arrival window")
    ax.set_title("Who used the cores while the short requests arrived", fontsize=10)
    ax.legend(fontsize=8)
