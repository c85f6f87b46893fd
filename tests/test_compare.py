"""`perfkit compare`: two runs side by side, each difference judged against the runs' intervals."""

from __future__ import annotations

import mlflow
import pytest

from perfkit.__main__ import main
from perfkit.compare import RunNotFound, exceeds, resolve_run, side_by_side


def test_a_difference_is_judged_only_where_an_interval_exists():
    a = {"tok_s": 20.0, "tok_s_ci_low": 19.0, "tok_s_ci_high": 21.0, "rss": 100.0, "p99": 5.0}
    b = {"tok_s": 80.0, "tok_s_ci_low": 70.0, "tok_s_ci_high": 90.0, "rss": 101.0, "p99": 5.0, "only_b": 1.0}
    table = side_by_side(a, b).set_index("metric")
    assert list(table.index) == ["p99", "rss", "tok_s"]  # shared keys only, intervals folded in
    assert table.loc["tok_s", "exceeds interval"] == "yes" and table.loc["rss", "exceeds interval"] == "—"
    assert table.loc["tok_s", "difference"] == 60.0 and table.loc["tok_s", "difference (%)"] == pytest.approx(300.0)
    assert exceeds("tok_s", a, b | {"tok_s_ci_low": 20.5}) == "no"  # overlapping intervals
    assert exceeds("x", {"x": 10.0, "x_ci_low": 9.0, "x_ci_high": 11.0}, {"x": 10.5}) == "no"
    assert exceeds("x", {"x": 10.0}, {"x": 12.0, "x_ci_low": 11.5, "x_ci_high": 12.5}) == "yes"


def test_compare_prints_two_runs_by_id_or_stage_and_name(perfkit_root, capsys):
    from perfkit import tracking

    tracking.client(perfkit_root)
    experiment = tracking.experiment_id("optimized", perfkit_root)
    ids = {}
    for name, tok in (("baseline", 20.0), ("optimized", 80.0)):
        with mlflow.start_run(run_name=name, experiment_id=experiment) as run:
            mlflow.log_metrics({"throughput_tok_s": tok, "throughput_tok_s_ci_low": tok - 1, "throughput_tok_s_ci_high": tok + 1})
            ids[name] = run.info.run_id
    assert main(["compare", ids["baseline"], "optimized/optimized"]) == 0
    out = capsys.readouterr().out
    assert "throughput_tok_s" in out and "baseline" in out and "optimized" in out and "yes" in out and "60" in out
    assert resolve_run("optimized/baseline", perfkit_root).info.run_id == ids["baseline"]
    with pytest.raises(RunNotFound):
        resolve_run("optimized/nothing", perfkit_root)
    assert main(["compare", "nope", ids["baseline"]]) == 2
