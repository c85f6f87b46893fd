"""The distillation stage's rendering: the speed/quality frontier, the learning curves and the conclusion, each
computed from the result's numbers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from perfkit.stages.distillation.result import DistillationResult

MARKERS = {"teacher": "s", "student": "o", "control-ce": "^", "control-untrained": "x"}


def frontier(result: DistillationResult) -> Figure:
    """Accuracy kept against speed-up, over the fp32 and over the bf16 teacher; controls marked."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    rows = result.rows()
    claimed_kept, claimed_speed = result.target_kept_pct, result.target_speedup
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, base in zip(axes, ("fp32", "bf16")):
        for name, m in rows.items():
            x = m.get(f"speedup_vs_{base}")
            if m["role"] == "control-untrained":  # not timed: its trained siblings' architecture
                sibling = next((v for k, v in rows.items() if v["layers"] == m["layers"] and v.get(f"speedup_vs_{base}")), {})
                x = sibling.get(f"speedup_vs_{base}")
            if x is None or (isinstance(x, float) and math.isnan(x)):
                continue
            y = m["accuracy_kept_pct"]
            err = [[y - m["accuracy_kept_pct_ci_low"]], [m["accuracy_kept_pct_ci_high"] - y]]
            ax.errorbar([x], [y], yerr=err, fmt=MARKERS.get(m["role"], "o"), capsize=3, label=f"{name} ({m['role']})")
        ax.axhline(claimed_kept, ls="--", c="grey")
        ax.axvline(claimed_speed, ls=":", c="grey")
        ax.set(xlabel=f"speed-up over the {base} teacher (tokens/s, batch {result.batch_sizes[0]})", title=f"vs the {base} teacher")
    axes[0].set_ylabel("accuracy kept, % (next-token top-1, 95% CI)")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"C16 claims {claimed_kept:g}% kept at {claimed_speed:g}x (dashed, dotted)")
    fig.tight_layout()
    return fig


def learning_curves(result: DistillationResult) -> Figure:
    """Accuracy kept and agreement against training tokens, with the fitted power law extrapolated."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for student in result.students:
        for run in student.runs:
            curve = run.result.curve
            tokens = [max(p["tokens"], 1) for p in curve]
            (line,) = left.plot(tokens, [100 * p["accuracy_kept"] for p in curve], "o-", label=run.name)
            right.plot(tokens, [100 * p["top1_agreement"] for p in curve], "o-", label=run.name)
            trend = run.trend
            if trend is not None and trend.b > 0:
                end = min(trend.tokens_for(0.9), tokens[-1] * 1e4)
                xs = np.geomspace(max(tokens[1] if len(tokens) > 1 else 1, 1), end, 50)
                left.plot(xs, [100 * trend.kept_at(x) for x in xs], "--", c=line.get_color(), alpha=0.6,
                          label=f"{run.name} trend (extrapolation)")  # fmt: skip
    for target in (80, 89):
        left.axhline(target, ls=":", c="grey")
    left.set(xscale="log", xlabel="training tokens (step 0 drawn at 1)", ylabel="accuracy kept, %", title="accuracy kept")
    right.set(xscale="log", xlabel="training tokens (step 0 drawn at 1)", ylabel="top-1 agreement with the teacher, %",
              title="agreement")  # fmt: skip
    left.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _ci(m: dict[str, Any], key: str, fmt: str = ".1f") -> str:
    return f"{m[key]:{fmt}} [{m[f'{key}_ci_low']:{fmt}}, {m[f'{key}_ci_high']:{fmt}}]"


def _x(value: Any) -> str:
    return "not timed" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}x"


def _tokens(value: float) -> str:
    if not math.isfinite(value):
        return "never (the fitted trend does not rise)"
    return f"{value:,.3g} tokens"


def conclusion(r: DistillationResult) -> str:
    rows, s, c = r.rows(), r.summary(), r.context
    t, b = rows["teacher-fp32"], rows["teacher-bf16"]
    lines = [
        f"The fp32 teacher predicts the next token of held-out *Persuasion* correctly {100 * t['top1_accuracy']:.1f}% of the "
        f"time ({t['eval_tokens']:,} tokens, perplexity {t['perplexity']:.1f}). Served in bf16 it runs at "
        f"{_x(b.get('speedup_vs_fp32'))} fp32's tokens/s at batch {r.batch_sizes[0]} and keeps {_ci(b, 'accuracy_kept_pct')}% "
        f"of its accuracy ({100 * b['top1_agreement']:.1f}% top-1 agreement): the free speed-up every student is also judged against."
    ]
    for student in r.students:
        untrained = rows[f"{student.n_layers}L-untrained"]
        kept = ", ".join(map(str, student.layers))
        how = "by angular-distance importance" if r.selection == "importance" else "evenly"
        lines.append(
            f"The {student.n_layers}-layer student keeps layers {kept} of {r.n_layers} (chosen {how}). Untrained it keeps "
            f"{_ci(untrained, 'accuracy_kept_pct')}% of the teacher's accuracy (perplexity {untrained['perplexity']:,.0f})."
        )
        for run in student.runs:
            m = rows[run.name]
            res = run.result
            stop = "" if res.stopped_by == "max_steps" else " (stopped by max_minutes)"
            lines.append(
                f"`{run.name}` after {res.steps} steps ({res.tokens:,} tokens{stop}, {res.step_s:.1f} s a step): accuracy kept "
                f"{_ci(m, 'accuracy_kept_pct')}%, agreement {100 * m['top1_agreement']:.1f}%, perplexity {m['perplexity']:,.1f}, "
                f"KL {m['kl_mean']:.2f} nats; speed-up {_x(m.get('speedup_vs_fp32'))} over the fp32 teacher (both fp32) and "
                f"{_x(rows.get(f'{run.name}@bf16', {}).get('speedup_vs_bf16'))} over the bf16 teacher (both bf16), "
                f"{m.get('size_saving_pct', math.nan):.0f}% smaller."
            )
            if run.loss != "ce":
                beats = r.beats(run.name, untrained_name := f"{student.n_layers}L-untrained")
                lines.append(
                    f"Against the untrained control, `{run.name}` is better beyond the interval on "
                    f"{'every quality figure (accuracy, agreement, perplexity, KL)' if beats else 'not every quality figure'}"
                    f" ({untrained_name})."
                )
                ce = f"{student.n_layers}L-ce"
                if ce in rows:
                    d = r.compare(run.name, ce)
                    lo, hi = d["accuracy_pts_diff_ci_low"], d["accuracy_pts_diff_ci_high"]
                    tie = (
                        f"no difference beyond the interval: at {c['eval_tokens']:,} held-out tokens and {res.steps} steps "
                        "the KL loss shows no measurable effect over plain fine-tuning"
                    )
                    who = "distillation wins" if lo > 0 else ("cross-entropy fine-tuning wins" if hi < 0 else tie)
                    lines.append(
                        f"Against cross-entropy fine-tuning at the same data and steps: {d['accuracy_pts_diff']:+.1f} accuracy points "
                        f"[{lo:+.1f}, {hi:+.1f}], {d['kl_diff']:+.2f} nats of KL "
                        f"[{d['kl_diff_ci_low']:+.2f}, {d['kl_diff_ci_high']:+.2f}]: {who}."
                    )
                trend = run.trend
                if trend is not None:
                    rate = res.tokens / (res.steps * res.step_s) if res.steps and res.step_s > 0 else math.nan
                    need = trend.tokens_for(0.89)
                    hours = (
                        f", about {need / rate / 3600:,.3g} hours at this run's {rate:,.0f} training tokens/s"
                        if math.isfinite(need) and rate == rate
                        else ""
                    )
                    lines.append(
                        f"Extrapolation, not a measurement: a power law fitted to its learning curve (gap to 100% kept = "
                        f"{trend.a:.3g} x tokens^-{trend.b:.3f}, {trend.points} points, R² {trend.r2:.2f}) reaches 80% kept at "
                        f"{_tokens(trend.tokens_for(0.8))} and 89% at {_tokens(need)}{hours}."
                    )
    if "student" in s:
        lines.append(
            f"The headline student, `{s['student']}`, has {s['size_ratio_non_embedding']:.1f}x fewer non-embedding parameters "
            f"than the teacher ({s.get('size_ratio_total', math.nan):.1f}x fewer in all, the tied embedding included); "
            f"C16's 13B -> 3B is {s['target_size_ratio']:g}x. "
            + (
                f"Training needed for 89% kept by the extrapolated trend: {_tokens(s['tokens_for_89pct_kept'])}."
                if "tokens_for_89pct_kept" in s
                else "No trend was fitted (fewer than two learning-curve points between 0 and 100% kept)."
            )
        )
    lines.append(
        f"Measured with {c['threads']} threads, bf16 autocast {'on' if c['bf16_autocast'] else 'off'} (native bf16: "
        f"{c['native_bf16']}), {c['data_sequences']} training sequences of {c['seq_len']} tokens (teacher top-{c['top_k']} cached), "
        f"{c['rounds']} timing round(s); 1-minute load average {c['load_avg_start']:.1f} at the start, {c['load_avg_end']:.1f} at the end."
    )
    return "\n\n".join(lines)
