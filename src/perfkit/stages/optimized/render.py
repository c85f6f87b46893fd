"""The optimized stage's rendering: its figures and conclusion, computed from the result's numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from perfkit.measure import summary_text

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from perfkit.stages.optimized.result import OptimizedResult


def figures(r: OptimizedResult) -> dict[str, Figure]:
    """Baseline against optimized by round, and the ablation's arms with their intervals."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    rounds = r.round_table()
    rounds = rounds[rounds["variant"].isin(["baseline", "optimized"])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, label) in zip(
        axes,
        (("throughput_tok_s", "output tokens/s"), ("latency_ms_mean", "mean latency (ms)"), ("peak_rss_mb", "peak server memory (MB)")),
    ):
        if key in rounds:
            sns.stripplot(data=rounds, x="variant", y=key, hue="variant", ax=ax, size=8, legend=False)
            sns.pointplot(data=rounds, x="variant", y=key, ax=ax, errorbar=None, color="black", markers="_")
        ax.set(title=label, xlabel="", ylabel=label)
    fig.suptitle(f"baseline vs optimized, {len(r.rounds['baseline'])} interleaved rounds (dots: rounds; bar: mean)")
    fig.tight_layout()
    out = {"before_after": fig}
    if r.ablation:
        table = r.ablation_table()
        fig2, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
        sns.barplot(data=table, x="name", y="throughput_tok_s", hue="kind", ax=left, dodge=False)
        left.errorbar(
            range(len(table)),
            table["throughput_tok_s"],
            yerr=[
                table["throughput_tok_s"] - table["throughput_tok_s_ci_low"],
                table["throughput_tok_s_ci_high"] - table["throughput_tok_s"],
            ],
            fmt="none",
            c="black",
        )
        left.set(
            title=f"ablation: output tokens/s ({len(r.rounds['baseline'])} interleaved rounds, 95% CI)", xlabel="", ylabel="output tokens/s"
        )
        sns.barplot(data=table, x="name", y="latency_ms_mean", hue="kind", ax=right, dodge=False)
        right.set(title="ablation: mean latency (round mean)", xlabel="", ylabel="mean latency (ms)")
        for ax in (left, right):
            ax.tick_params(axis="x", rotation=20)
        fig2.tight_layout()
        out["ablation"] = fig2
    return out


def conclusion(r: OptimizedResult) -> str:
    s = r.summary()
    lines = []
    chosen = [f"{c.area}: {c.reason}" for c in r.choices if c.applied]
    listed = [f"{c.area} ({c.status}): {c.reason}" for c in r.choices if not c.applied]
    lines.append("The stack, chosen from the upstream measurements: " + ("; ".join(chosen) or "no change") + ".")
    if listed:
        lines.append("Not applied: " + "; ".join(listed) + ".")
    if r.missing:
        lines.append(f"Upstream stages with no readable saved result (result.json) here: {', '.join(r.missing)}.")
    if r.baseline_stage_tok_s and "baseline_throughput_tok_s" in s:
        seen = s["baseline_throughput_tok_s"] / r.baseline_stage_tok_s
        lines.append(
            f"This stage's baseline rounds served {s['baseline_throughput_tok_s']:.1f} tokens/s; the baseline "
            f"stage, the same configuration run earlier, measured {r.baseline_stage_tok_s:.1f} ({seen:.2f}x). "
            f"That gap is how far a figure on this machine moves between runs (provenance gives when each ran "
            f"and the load): compare the stacks only through the ratios below, measured in interleaved rounds."
        )

    if "throughput_tok_s_gain" in s:
        lines.append(
            f"Under the baseline's load ({s['baseline_requests_per_round']} measured requests per round on the baseline, "
            f"{r.rounds['optimized'][0].load.summary.requests} on the optimized stack, "
            f"{s['rounds']} interleaved rounds), the optimized stack served {s['optimized_throughput_tok_s']:.1f} output "
            f"tokens/s against {s['baseline_throughput_tok_s']:.1f} ({summary_text(s, 'throughput_tok_s_gain', '.2f', 'x')}); mean "
            f"latency fell from {s['baseline_latency_ms_mean'] / 1000:.2f} s to {s['optimized_latency_ms_mean'] / 1000:.2f} s "
            f"(reduction {summary_text(s, 'latency_reduction_pct', '+.0f', '%')}), requests/s rose "
            f"{summary_text(s, 'throughput_gain_pct', '+.0f', '%')}."
        )
        lines.append(
            f"Peak server memory changed by {-s.get('peak_memory_reduction_pct', 0):+.0f}% "
            f"({s['baseline_peak_rss_mb']:.0f} → {s['optimized_peak_rss_mb']:.0f} MB; reduction "
            f"{summary_text(s, 'peak_memory_reduction_pct', '+.0f', '%')})."
        )
        lines.append(
            f"To serve {r.cost.target_qps:g} QPS at ${r.cost.usd_per_hour:.2f}/h, the baseline needs "
            f"{s['baseline_instances_at_target']:.0f} instance(s) (${s['baseline_usd_per_month_at_target']:.0f}/month) and "
            f"the optimized stack {s['optimized_instances_at_target']:.0f} (${s['optimized_usd_per_month_at_target']:.0f}"
            f"/month; reduction {summary_text(s, 'monthly_cost_reduction_pct', '+.0f', '%')}); $ per 1k requests "
            f"{s['baseline_cost_usd_per_1k_req']:.4f} → {s['optimized_cost_usd_per_1k_req']:.4f}, QPS per $ "
            f"{summary_text(s, 'qps_per_usd_gain', '.2f', 'x')}. Instances are counted from the closed-loop rate at "
            f"{r.rounds['baseline'][0].load.summary.users} users, not a capacity at an SLO."
        )
    lines += _ablation_text(r, s)
    if r.cold_starts is not None:
        lines.append(r.cold_starts.text())
    if r.case_study is not None:
        lines.append(r.case_study.text())
    if s.get("load_flags"):
        lines.append(f"Load run checks: {s['load_flags']}; read those runs with that in mind.")
    cores = r.measured_cores() or "unknown"
    lines.append(
        f"Load average {r.load_avg[0]:.2f} at the start, {r.load_avg[1]:.2f} at the end ({cores} cores: "
        f"above that the machine is shared and every figure is slower than it would be alone)."
    )
    return "\n\n".join(line for line in lines if line)


def _ablation_text(r: OptimizedResult, s: dict[str, Any]) -> list[str]:
    if not r.ablation:
        return []
    steps = "; ".join(f"{st.name} {r.arm_ratio(st.arm).text(unit='x')}" for st in r.ablation)
    out = [
        f"Ablation, each set of optimizations an arm of the same {len(r.rounds['baseline'])} interleaved rounds "
        f"(tokens/s over the baseline's, paired by round): {steps}."
    ]
    best = r.best_single()
    if best is not None and "tok_s_vs_best_single" in s:
        over = r.arm_ratio("optimized", best)
        low = over.ci[0] if over.ci else over.mean
        word = "adding the other helps" if low > 1 else "the other adds nothing measurable" if over.ci else "one round"
        out.append(f"The full stack gives {over.text(unit='x')} the best single optimization ({best}): {word}.")
    interaction = r.interaction()
    if interaction is not None:
        lo, hi = interaction.ci or (interaction.mean, interaction.mean)
        word = (
            "consistent with independent (multiplicative) composition"
            if lo <= 1 <= hi
            else "they compose less than multiplicatively (they speed up the same work)"
            if hi < 1
            else "they reinforce each other"
        )
        out.append(
            f"Interaction (the full gain over the product of the single gains, 1 = independent): {interaction.text(unit='x')}: {word}."
        )
    return out


# (row, baseline key, optimized key, change key, its format and unit, how the absolute figures are written)
HEADLINE = (
    ("output tokens/s", "baseline_throughput_tok_s", "optimized_throughput_tok_s", "throughput_tok_s_gain", ".2f", "x", 1.0),
    ("mean latency (s)", "baseline_latency_ms_mean", "optimized_latency_ms_mean", "latency_reduction_pct", ".0f", "% lower", 1e-3),
    ("peak server memory (MB)", "baseline_peak_rss_mb", "optimized_peak_rss_mb", "peak_memory_reduction_pct", ".0f", "% lower", 1.0),
    ("$ a month at the target QPS", "baseline_usd_per_month_at_target", "optimized_usd_per_month_at_target",
     "monthly_cost_reduction_pct", ".0f", "% lower", 1.0),
    ("cold start (s)", "baseline_cold_start_s", "optimized_cold_start_s", "cold_start_reduction_pct", ".1f", "% lower", 1.0),
    ("documents a minute (C20)", "baseline_docs_per_min", "optimized_docs_per_min", "docs_per_min_gain", ".2f", "x", 1.0),
)  # fmt: skip


def headline(r: OptimizedResult) -> tuple[str, pd.DataFrame]:
    """What the optimized stack buys, at what quality: a sentence and the before/after figures with their intervals."""
    import pandas as pd

    s = r.summary()
    rows = [
        {"figure": label, "baseline": s[before] * scale, "optimized": s[after] * scale, "change (95% CI)": summary_text(s, key, fmt, unit)}
        for label, before, after, key, fmt, unit, scale in HEADLINE
        if before in s and after in s
    ]
    precision = next((c for c in r.choices if c.area == "precision" and c.applied), None)
    quality = f" Its precision was chosen at a quality gate: {precision.reason}." if precision is not None else ""
    if "case_study_rouge_l_mean" in s:
        gate = "passes" if s["case_study_similarity_gate_passed"] else "fails"
        quality += (
            f" Its document summaries score ROUGE-L {s['case_study_rouge_l_mean']:.2f} against the baseline's: it {gate} the "
            f"similarity gate; the best stack that passes it is {s['case_study_best_passing_stack']}."
        )
    words = (
        f"The optimized stack ({r.stack}) against the baseline (one request at a time, fp32) under the same load, in "
        f"{s['rounds']} interleaved rounds: {summary_text(s, 'throughput_tok_s_gain', '.2f', 'x')} the output tokens/s." + quality
    )
    return words, pd.DataFrame(rows)
