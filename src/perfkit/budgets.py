"""Each stage's wall time against its budget, and the whole run's against the 90 minutes `make run` has.

A stage's budget (`StageSpec.budget_s`, kept in its provenance) carries a margin on the reference 2-core
CPU, so the budgets' sum is no bound on the whole run: the run is timed itself, from the first stage's
start to the last one's end (DVC's and the notebooks' time between stages included), where the stages'
results come from one run.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

RUN_BUDGET_S = 5400.0  # `make run`'s `dvc repro` on the reference 2-core CPU: 90 minutes (here without prepare and report)
WHOLE_RUN = "all stages before the report (first start to last end)"
MAX_STAGE_GAP_S = 300.0  # a longer pause between two stages: their results come from separate runs


def run_span_s(provenances: Mapping[str, Mapping[str, Any]]) -> float | None:
    """Seconds from the first stage's start to the last one's end, what DVC and the notebooks add between stages
    included, when the stages ran as one run (no pause longer than `MAX_STAGE_GAP_S`); None otherwise."""
    spans = []
    for prov in provenances.values():
        if prov.get("smoke") or prov.get("profile") not in (None, "none"):
            return None  # 90 minutes is the default run's bound on the reference CPU
        started, wall = prov.get("started_at"), prov.get("wall_s")
        if not isinstance(started, str) or not isinstance(wall, int | float):
            return None
        start = datetime.fromisoformat(started).timestamp()
        spans.append((start, start + wall))
    if not spans:
        return None
    spans.sort()
    if any(b[0] - a[1] > MAX_STAGE_GAP_S for a, b in zip(spans, spans[1:])):
        return None
    return round(max(end for _, end in spans) - spans[0][0], 1)  # timestamps' float noise off


def budget_rows(provenances: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each stage's wall time against its budget (a smoke run has none), then the whole run's against 90 minutes
    where the stages ran as one run."""
    rows = []
    for name, prov in provenances.items():
        wall, budget = prov.get("wall_s"), prov.get("budget_s")
        rows.append(
            {
                "stage": name,
                "wall s": wall,
                "budget s": budget,
                "over": bool(isinstance(wall, int | float) and isinstance(budget, int | float) and wall > budget),
            }
        )
    span = run_span_s(provenances)
    if span is not None:
        rows.append({"stage": WHOLE_RUN, "wall s": span, "budget s": RUN_BUDGET_S, "over": span > RUN_BUDGET_S})
    return rows
