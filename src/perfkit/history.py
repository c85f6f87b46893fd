"""Run-to-run agreement of the claim figures: is today's figure where the previous runs put it?

One run's interval says how much its rounds agreed with each other; only other runs say whether the
figure moves from run to run. The report appends each full run's headline figures to a committed
`experiments/history.json` (git history is absent in shallow clones and invisible to DVC) and shows,
for every figure, the previous runs' values and intervals beside today's.

Only `relative` figures in ratio units are kept: ratios and % changes between variants measured side
by side, which compare across machines (a time in ms is one machine's figure).
A run is named by its stages' start times, so the same stage results are one run however often the
report is re-run; a smoke run is never recorded. `backfill` builds the same records from the
metrics.json files of earlier commits, for the runs made before the history existed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfkit.claims import FAILS, GATE_FAILED, HOLDS, INCONCLUSIVE, ClaimResult, Estimate
from perfkit.errors import PerfkitError

if TYPE_CHECKING:
    import pandas as pd

HISTORY_FILE = "history.json"
JUDGED = (HOLDS, FAILS, INCONCLUSIVE, GATE_FAILED)  # the verdicts a figure's precision decides
RATIO_UNITS = ("x", "%", "points")  # a relative check in ms (a wait, a decompression time) is this machine's figure
_RUN_FIELDS = ("run", "date", "commits", "cpu", "git_dirty", "smoke", "figures")
# The `agreement` table's own columns, around one column per previous run (named by `_name`).
_LEADING = ("figure", "unit", "today")
_TRAILING = ("overlaps", "non_overlapping_with", "other_cpu", "status_change")
FIXED_COLUMNS = _LEADING + _TRAILING


class HistoryFileError(PerfkitError, ValueError):
    """experiments/history.json is not a list of run records; the message names the path and what is wrong."""


def _record(figures: Iterable[tuple[str, Mapping[str, Any]]], provenance: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One run's record from (key, check fields) pairs and each stage's provenance: the one place
    `entry` and `backfill` build it. Only the stages that measured a kept figure describe the run,
    so that the report's own start time (or any stage without a figure) never changes the id."""
    kept = {
        key: {
            "stage": f["stage"],
            "value": f["measured"],
            "low": f.get("low"),
            "high": f.get("high"),
            "unit": f.get("unit", ""),
            "claimed": f.get("claimed"),
            "status": f.get("status", ""),
        }
        for key, f in figures
        if f.get("kind") == "relative" and f.get("unit") in RATIO_UNITS and f.get("measured") is not None
    }
    stages = {f["stage"]: provenance.get(f["stage"], {}) for f in kept.values()}
    started = sorted((stage, str(p.get("started_at", ""))) for stage, p in stages.items())
    return {
        "run": hashlib.sha256(json.dumps(started).encode()).hexdigest()[:12],
        "date": max((when for _, when in started if when), key=_when, default=""),
        "commits": sorted({str(p["git_commit"])[:7] for p in stages.values() if p.get("git_commit")}),
        "cpu": sorted({str(p["cpu_model"]) for p in stages.values() if p.get("cpu_model")}),
        "git_dirty": any(bool(p.get("git_dirty")) for p in stages.values()),
        "smoke": any(bool(p.get("smoke")) for p in stages.values()),
        "figures": kept,
    }


def entry(results: Iterable[ClaimResult], provenance: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """This run's record: its relative, measured figures (by check key) and where they were measured
    (`provenance`: stage name → that stage's provenance)."""
    return _record(((r.key, r.as_dict()) for r in results), provenance)


def _when(date: str) -> datetime:
    """A record's date as a time to sort by (no date sorts first; a date without a zone is UTC)."""
    if not date:
        return datetime.min.replace(tzinfo=UTC)
    when = datetime.fromisoformat(date)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def load(path: Path) -> list[dict[str, Any]]:
    """The recorded runs, oldest first ([] when there is no file yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        runs = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise HistoryFileError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(runs, list):
        raise HistoryFileError(f"{path}: a list of runs expected, found a {type(runs).__name__}")
    for i, run in enumerate(runs):
        missing = [k for k in _RUN_FIELDS if not isinstance(run, dict) or k not in run]
        if missing:
            raise HistoryFileError(f"{path}: run {i} lacks {', '.join(missing)}")
        if not isinstance(run["figures"], dict):
            raise HistoryFileError(f"{path}: run {i} ({run['run']}): figures is a {type(run['figures']).__name__}, not a mapping")
        try:
            _when(run["date"])
        except (TypeError, ValueError) as exc:
            raise HistoryFileError(f"{path}: run {i} ({run['run']}): date {run['date']!r} is not an ISO time") from exc
    return runs


def record(path: Path, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Add `run` to the history at `path` (replacing a record of the same run), written atomically;
    a smoke run is never recorded. Returns the history as it now stands."""
    path = Path(path)
    runs = load(path)
    if run["smoke"]:
        return runs
    runs = sorted([r for r in runs if r["run"] != run["run"]] + [run], key=lambda r: _when(r["date"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".history.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(runs, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return runs


def _name(run: Mapping[str, Any]) -> str:
    """A run as a column name: "2026-12-05 21:15 8321de6 AMD EPYC"."""
    cpu = "+".join(" ".join(re.sub(r"\((R|TM)\)|\bProcessor\b|\bCPU\b", " ", c).split()) for c in run["cpu"])
    return " ".join(part for part in (run["date"][:16].replace("T", " "), "+".join(run["commits"]), cpu) if part)


def _estimate(figure: Mapping[str, Any]) -> Estimate:
    return Estimate(figure["value"], figure.get("low"), figure.get("high"))


def _overlap(a: Estimate, b: Estimate) -> bool:
    return a.low <= b.high and b.low <= a.high  # type: ignore[operator]


def agreement(history: Sequence[Mapping[str, Any]], current: Mapping[str, Any], previous: int = 4) -> pd.DataFrame:
    """Each figure of `current` (in its order) beside the last `previous` runs before it, newest first:
    whether the intervals overlap, which runs disagree, which ran on other CPUs, and a status change
    against the most recent of them that judged the figure."""
    import pandas as pd

    before = [r for r in history if r["run"] != current["run"] and _when(r["date"]) < _when(current["date"])]
    shown = sorted(before, key=lambda r: _when(r["date"]), reverse=True)[: max(previous, 0)]
    names = [_name(r) for r in shown]
    rows = []
    for key, fig in current["figures"].items():
        unit, today = fig.get("unit", ""), _estimate(fig)
        theirs = [
            (name, run, _estimate(run["figures"][key]), run["figures"][key]["status"])
            for name, run in zip(names, shown)
            if key in run["figures"]
        ]
        compared = [(name, est) for name, _, est, _ in theirs if today.has_interval and est.has_interval]
        apart = [name for name, est in compared if not _overlap(today, est)]
        values = {name: est.text(unit) for name, _, est, _ in theirs}
        last = theirs[0] if theirs else None
        rows.append(
            {
                "figure": key,
                "unit": unit,
                "today": today.text(unit),
                **{name: values.get(name, "—") for name in names},
                "overlaps": (not apart) if compared else None,
                "non_overlapping_with": ", ".join(apart),
                "other_cpu": ", ".join(name for name, run, _, _ in theirs if set(run["cpu"]) != set(current["cpu"])),
                "status_change": f"{last[3]} → {fig['status']} ({last[0]})" if last and last[3] != fig["status"] else "",
            }
        )
    return pd.DataFrame(rows, columns=[*_LEADING, *names, *_TRAILING])


def previous_runs(table: pd.DataFrame) -> list[str]:
    """The previous runs an `agreement` table shows (its columns between the fixed ones), newest first: readers
    count and name them here rather than from the table's layout."""
    return [str(c) for c in table.columns if c not in FIXED_COLUMNS]


def precision(est: Estimate, claimed: float | None, limit: float = 0.15) -> tuple[float | None, bool]:
    """The interval's half-width as a share of the figure's scale, and whether it is within `limit`.
    The scale is |value|, or |claimed| when larger: a difference near 0 would otherwise look
    endlessly imprecise, so the claim's size serves as the absolute margin. (None, True) without an interval."""
    if not est.has_interval:
        return None, True
    half = (est.high - est.low) / 2  # type: ignore[operator]
    scale = max(abs(est.value), abs(claimed) if claimed is not None else 0.0)
    if scale == 0:
        return (0.0, True) if half == 0 else (math.inf, False)
    share = half / scale
    return share, share <= limit


def rounds_needed(share: float, rounds: int, limit: float = 0.15) -> int:
    """The rounds that would bring a half-width of `share` (after `rounds` rounds) within `limit`, if it
    shrinks as 1/sqrt(rounds); `rounds` when it is within already."""
    if not math.isfinite(share):
        raise ValueError(f"a half-width share of {share} cannot be brought within {limit} by more rounds")
    if share <= limit:
        return rounds
    needed = math.ceil(round(rounds * (share / limit) ** 2, 9))  # round: 2 x (0.33/0.03)^2 is 242, not 242.00000000000009
    return max(needed, rounds + 1)


def precision_rows(results: Iterable[ClaimResult], rounds_by_stage: Mapping[str, Any], limit: float) -> list[dict[str, Any]]:
    """Every judged relative figure with an interval: its half-width as a share of its scale, and the rounds that
    would bring it within `limit` (the half-width shrinks as 1 / sqrt(rounds)) from the rounds its stage ran."""
    out = []
    for r in results:
        if (
            r.kind != "relative"
            or r.unit not in RATIO_UNITS
            or r.status not in JUDGED
            or r.low is None
            or r.high is None
            or r.measured is None
        ):
            continue
        share, ok = precision(Estimate(r.measured, r.low, r.high), r.claimed, limit)
        rounds = rounds_by_stage.get(r.stage)
        need = rounds_needed(share, rounds, limit) if not ok and share is not None and isinstance(rounds, int) else None
        out.append(
            {
                "figure": r.key,
                "stage": r.stage,
                "measured": r.measured,
                "CI low": r.low,
                "CI high": r.high,
                "half-width %": None if share is None else 100 * share,
                "within": ok,
                "rounds": rounds,
                "rounds needed": need,
            }
        )
    return out


def backfill(root: Path, revisions: Sequence[str], stages: Sequence[str]) -> list[dict[str, Any]]:
    """Records of earlier committed runs, from `experiments/<stage>/metrics.json` at each revision
    (`summary.claims` and `summary.provenance`); a stage missing at a revision is skipped, and so is
    a revision with no relative figure measured. An unknown revision is refused."""
    out = []
    for rev in revisions:
        known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=root, capture_output=True, text=True)
        if known.returncode != 0:
            raise ValueError(f"{root}: no commit {rev!r}")
        figures: list[tuple[str, Mapping[str, Any]]] = []
        provenance: dict[str, Mapping[str, Any]] = {}
        for stage in stages:
            shown = subprocess.run(["git", "show", f"{rev}:experiments/{stage}/metrics.json"], cwd=root, capture_output=True, text=True)
            if shown.returncode != 0:
                continue
            summary = json.loads(shown.stdout).get("summary", {})
            provenance[stage] = summary.get("provenance", {})
            figures += [(key, {**check, "stage": stage}) for key, check in summary.get("claims", {}).items()]
        run = _record(figures, provenance)
        if run["figures"]:
            out.append(run)
    return out
