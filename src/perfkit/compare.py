"""Two MLflow runs side by side: each shared metric, the difference, and whether it exceeds the runs' intervals.

Every variant run carries the same metric keys (`perfkit.tracking.log_variant`), so two runs line up
key by key. A run that logged a between-round interval (`<key>_ci_low`, `<key>_ci_high`) lets the
difference be judged: intervals that do not overlap differ beyond round-to-round noise; one run's
value outside the other's interval differs beyond that run's noise; with no interval the difference
is shown and not judged.

A run is named by its id, or as `STAGE/RUN_NAME` (the latest run of that name in `perfkit/STAGE`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from perfkit.errors import PerfkitError

if TYPE_CHECKING:
    import pandas as pd

CI = ("_ci_low", "_ci_high")


class RunNotFound(PerfkitError, LookupError):
    """No MLflow run by that id or STAGE/NAME."""


def interval(metrics: Mapping[str, float], key: str) -> tuple[float, float] | None:
    low, high = metrics.get(key + CI[0]), metrics.get(key + CI[1])
    return (low, high) if low is not None and high is not None else None


def exceeds(key: str, a: Mapping[str, float], b: Mapping[str, float]) -> str:
    """'yes' / 'no' when an interval judges the difference, '—' when neither run has one."""
    ia, ib = interval(a, key), interval(b, key)
    if ia and ib:
        return "yes" if ia[1] < ib[0] or ib[1] < ia[0] else "no"
    for own, other in ((ia, b[key]), (ib, a[key])):
        if own:
            return "yes" if not own[0] <= other <= own[1] else "no"
    return "—"


def side_by_side(a: Mapping[str, float], b: Mapping[str, float], *, names: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
    """One row per metric both runs have (interval keys folded into their metric): values, difference, % and the judgement."""
    import pandas as pd

    rows = []
    for key in sorted(set(a) & set(b)):
        if key.endswith(CI):
            continue
        va, vb = float(a[key]), float(b[key])
        pct = 100.0 * (vb - va) / abs(va) if va and math.isfinite(va) else None
        rows.append(
            {
                "metric": key,
                names[0]: va,
                names[1]: vb,
                "difference": vb - va,
                "difference (%)": pct,
                "exceeds interval": exceeds(key, a, b),
            }
        )
    return pd.DataFrame(rows, columns=["metric", *names, "difference", "difference (%)", "exceeds interval"])


def resolve_run(ref: str, root: Path):
    """An MLflow run by id, or `STAGE/RUN_NAME` (the latest)."""
    from mlflow.exceptions import MlflowException

    from perfkit import tracking

    client = tracking.client(root)
    if "/" in ref:
        stage, name = ref.split("/", 1)
        experiment = client.get_experiment_by_name(f"perfkit/{stage}")
        if experiment is None:
            raise RunNotFound(f"{ref}: no MLflow experiment perfkit/{stage}")
        found = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"attributes.run_name = '{name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not found:
            raise RunNotFound(f"{ref}: no run named {name!r} in perfkit/{stage}")
        return found[0]
    try:
        return client.get_run(ref)
    except MlflowException as exc:
        raise RunNotFound(f"{ref}: no MLflow run with this id (or use STAGE/RUN_NAME)") from exc


def compare_runs(ref_a: str, ref_b: str, root: Path) -> pd.DataFrame:
    a, b = resolve_run(ref_a, root), resolve_run(ref_b, root)
    names = (a.info.run_name or ref_a, b.info.run_name or ref_b)
    if names[0] == names[1]:
        names = (f"{names[0]} ({ref_a})", f"{names[1]} ({ref_b})")
    return side_by_side(a.data.metrics, b.data.metrics, names=names)
