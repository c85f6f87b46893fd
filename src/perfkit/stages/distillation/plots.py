"""The distillation stage's figures: the speed/quality frontier and the learning curves."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

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
