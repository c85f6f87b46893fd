"""The cache stage end to end in smoke mode: every variant served, the hit-rate model, faults, prefix, C2 judged."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from conftest import REPO

from perfkit.stage import run_stage
from perfkit.stages.cache.model import HitRateModel


def test_the_hit_rate_model_fits_the_end_points_and_says_what_a_target_needs():
    model = HitRateModel.fit([(0.0, 1000.0), (0.5, 520.0), (0.98, 40.0)])
    assert model is not None
    assert abs(model.t_miss_ms - 1000.0) < 1e-9 and abs(model.t_hit_ms - 20.408163) < 1e-3
    assert abs(model.predict_ms(0.98) - 40.0) < 1e-9
    assert abs(model.needed_hit_rate(250.0) - (750.0 / (1000.0 - model.t_hit_ms))) < 1e-9
    assert model.needed_hit_rate(5.0) is None  # faster than a hit: no hit rate gets there
    assert HitRateModel.fit([(0.0, 10.0), (0.1, 9.0)]) is None  # too close together to fit


def test_cache_stage_smoke(perfkit_root: Path) -> None:
    (perfkit_root / "data" / "claims.yaml").symlink_to(REPO / "data" / "claims.yaml")
    summary = json.loads(run_stage("cache", smoke=True, root=perfkit_root).read_text())["summary"]
    points = pd.read_csv(perfkit_root / "experiments" / "cache" / "points.csv")
    assert set(points["variant"]) == {"none", "memory-exact", "redis-exact", "redis-semantic"}
    assert (points[points["variant"] == "none"]["hit_rate"] == 0).all()
    for _, row in points.iterrows():
        assert row["errors_5xx"] == 0
        assert abs(row["hit_rate"] - row["planned_hit_rate"]) < 0.15 or row["variant"] == "redis-semantic"
    assert summary["fault_5xx"] == 0 and summary["fault_lost_requests"] == 0
    assert summary["flood_evictions"] > 0 and summary["flood_redis_used_mb"] <= summary["flood_max_memory_mb"] * 1.05
    assert summary["prefix_same_tokens"] is True
    assert 0 < summary["cache_hit_rate"] <= 1 and "mean_latency_reduction_pct" in summary
    assert "C2.mean_response_reduction_at_the_measured_hit_rate" in summary["claims"] or any(
        k.startswith("C2") for k in summary["claims"])
    thresholds = pd.read_csv(perfkit_root / "experiments" / "cache" / "thresholds.csv")
    assert (thresholds["wrong_hits"] <= thresholds["hits"]).all()
    prefix = pd.read_csv(perfkit_root / "experiments" / "cache" / "prefix.csv")
    assert set(prefix["where"]) == {"offline", "served"} and set(prefix["reuse"]) == {True, False}
