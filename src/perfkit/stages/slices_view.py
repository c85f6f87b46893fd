"""Every load run a stage keeps, per time slice: one table pair and one figure, the same on every served page.

A stage lists its load runs in `StageResult.load_runs()`; `StageResult.all_tables()` and `all_figures()` add
these tables (`slices.csv`: each run's slices; `trends.csv`: each run's trend) and this figure to the stage's own,
so the baseline, batching, optimized and capacity pages show warm-up, drift and degradation the
same way. The figure puts each run's tokens/s per slice as a share of that run's mean (runs of
different rates and stacks on one scale: a flat line at 100% is a steady run) beside each run's
trend in % per minute with its 95% interval (`perfkit.load.timeslices`): a bar clear of zero is a
run that was not steady.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from perfkit.load.runner import LoadRun

NO_TREND = "none: under 3 slices before the last send, or no tokens"
MAX_LINES = 12  # slice lines drawn before the left panel shows only the runs that were not steady


def slice_rows(runs: Mapping[str, LoadRun]) -> list[dict[str, Any]]:
    """One row per run and slice: the run's name, then the slice's figures."""
    return [{"run": name} | s.row() for name, run in runs.items() for s in run.summary.slices]


def trend_rows(runs: Mapping[str, LoadRun]) -> list[dict[str, Any]]:
    """One row per run: its request count and window, and its trend (`NO_TREND` where `timeslices.trend` gives none)."""
    rows = []
    for name, run in runs.items():
        s = run.summary
        row: dict[str, Any] = {"run": name, "requests": s.requests, "window_s": s.window_s, "slices": len(s.slices)}
        if s.trend is not None:
            low, high = s.trend.ci
            row |= {"trend_pct_per_min": s.trend.pct_per_min, "ci_low": low, "ci_high": high, "trend": s.trend.direction}
        else:
            row |= {"trend_pct_per_min": None, "ci_low": None, "ci_high": None, "trend": NO_TREND}
        rows.append(row)
    return rows


def tables(runs: Mapping[str, LoadRun]) -> dict[str, pd.DataFrame]:
    """`slices` and `trends`, or nothing where the stage keeps no run with slices."""
    import pandas as pd

    sliced = slice_rows(runs)
    return {"slices": pd.DataFrame(sliced), "trends": pd.DataFrame(trend_rows(runs))} if sliced else {}


def figures(runs: Mapping[str, LoadRun]) -> dict[str, Figure]:
    """`time_slices`: tokens/s per slice as % of each run's mean, and each run's trend with its interval."""
    import matplotlib.pyplot as plt

    trends = [r for r in trend_rows(runs) if r["trend_pct_per_min"] is not None]
    sliced = {name: run for name, run in runs.items() if run.summary.slices}
    if not sliced:
        return {}
    unsteady = {r["run"] for r in trends if r["trend"] != "flat"}
    drawn = sliced if len(sliced) <= MAX_LINES else {n: r for n, r in sliced.items() if n in unsteady}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, max(3.8, 0.28 * len(trends) + 1.2)))
    for name, run in drawn.items():
        slices = run.summary.slices
        mean = sum(s.tokens for s in slices) / sum(s.length_s for s in slices)
        if mean > 0:
            left.plot([s.start_s + s.length_s / 2 for s in slices], [100 * s.tok_s / mean for s in slices], marker=".", label=name)
    left.axhline(100, color="grey", lw=0.8)
    shown = "every run" if len(drawn) == len(sliced) else f"the {len(drawn)} runs not steady of {len(sliced)}"
    left.set(xlabel="s from the run's measured start", ylabel="output tokens/s, % of the run's mean", title=f"per time slice ({shown})")
    if drawn and len(drawn) <= MAX_LINES:
        left.legend(fontsize=7)
    for y, row in enumerate(trends):
        colour = "grey" if row["trend"] == "flat" else "tab:red" if row["trend"] == "falling" else "tab:blue"
        right.errorbar(
            row["trend_pct_per_min"], y,
            xerr=[[row["trend_pct_per_min"] - row["ci_low"]], [row["ci_high"] - row["trend_pct_per_min"]]],
            fmt="o", color=colour, capsize=3,
        )  # fmt: skip
    right.axvline(0, color="grey", lw=0.8)
    right.set_yticks(range(len(trends)), [r["run"] for r in trends], fontsize=7)
    right.invert_yaxis()
    right.set(xlabel="tokens/s trend, % of the mean per minute (95% interval)", title="trend per run (clear of 0: not steady)")
    fig.tight_layout()
    return {"time_slices": fig}
