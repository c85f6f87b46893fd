"""The cache stage end to end in smoke mode: every variant served, the hit-rate model, faults, prefix, C2 judged."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
from conftest import judged, smoke_experiments

from perfkit.stage import run_stage
from perfkit.stages.cache.model import HitRateModel
from perfkit.stages.cache.render import conclusion
from perfkit.stages.cache.result import CacheResult, Redis
from perfkit.stages.cache.served import PointRun, Timed


def _point(hits_ms: list[float], misses_ms: list[float]) -> PointRun:
    timed = [Timed(i, ms / 1000, 200, "hit", "e", "i") for i, ms in enumerate(hits_ms)]
    timed += [Timed(len(timed) + i, ms / 1000, 200, "miss", "e", "i") for i, ms in enumerate(misses_ms)]
    return PointRun("redis-exact", len(hits_ms) / len(timed), 0.0, 1.0, 0, tuple(timed))


def _result(*runs: PointRun) -> CacheResult:
    return CacheResult(
        runs=runs,
        semantic=None,
        sweep=(),
        redis=Redis(),
        prefix=(),
        claim_variant="redis-exact",
        claim_target=0.5,
        threshold=0.9,
        max_tokens=16,
        load_avg=(0.0, 0.0),
    )


def test_the_hit_rate_model_fits_the_end_points_and_says_what_a_target_needs():
    model = HitRateModel.fit([(0.0, 1000.0), (0.5, 520.0), (0.98, 40.0)])
    assert model is not None
    assert abs(model.t_miss_ms - 1000.0) < 1e-9 and abs(model.t_hit_ms - 20.408163) < 1e-3
    assert abs(model.predict_ms(0.98) - 40.0) < 1e-9
    assert abs(model.needed_hit_rate(250.0) - (750.0 / (1000.0 - model.t_hit_ms))) < 1e-9
    assert model.needed_hit_rate(5.0) is None  # faster than a hit: no hit rate gets there
    assert HitRateModel.fit([(0.0, 10.0), (0.1, 9.0)]) is None  # too close together to fit


def test_the_worst_point_splits_its_error_into_its_misses_and_its_hits_share():
    # ends: all misses at 1000 ms, all hits at 10 ms; the middle point's misses cost 1200 ms, its hits 10
    ends = (_point([], [990.0, 1000.0, 1010.0] * 4), _point([10.0] * 12, []))
    middle = _point([10.0] * 6, [1190.0, 1200.0, 1210.0] * 2)
    s = _result(*ends, middle).summary()
    assert abs(s["model_worst_point_hit_rate_pct"] - 50.0) < 1e-9
    predicted = 0.5 * 10 + 0.5 * 1000
    assert abs(s["model_worst_point_error_pct"] - 100 * ((0.5 * 10 + 0.5 * 1200) / predicted - 1)) < 1e-6
    assert abs(s["model_error_from_miss_cost_pct"] - s["model_worst_point_error_pct"]) < 1e-6  # hits cost t_hit exactly
    assert s["model_worst_point_miss_ms_ci_low"] > s["t_miss_ms"]  # beyond the misses' own spread
    assert "really cost more" in conclusion(_result(*ends, middle))


def test_a_worst_point_within_its_misses_spread_says_so():
    ends = (_point([], [1000.0] * 12), _point([10.0] * 12, []))
    middle = _point([10.0] * 6, [400.0, 2000.0, 1000.0, 1600.0, 500.0, 1700.0])  # mean 1200 ms, widely spread
    text = conclusion(_result(*ends, middle))
    assert "inside those misses' 95% interval" in text


def test_the_miss_overhead_is_the_lookup_and_the_store_at_their_medians():
    point = _point([10.0] * 4, [1000.0] * 4)
    buckets = {"0.00025": 1.0, "0.0005": 8.0, "0.001": 8.0, "+Inf": 8.0}  # GETs: 7 of 8 in (0.25, 0.5] ms
    stores = {"0.00025": 0.0, "0.0005": 0.0, "0.001": 4.0, "+Inf": 4.0}  # SETs: all 4 in (0.5, 1] ms
    server = {f"perfkit_cache_lookup_seconds_bucket.exact.le={b}": v for b, v in buckets.items()}
    server |= {f"perfkit_cache_lookup_seconds_bucket.store.le={b}": v for b, v in stores.items()}
    server |= {
        "perfkit_cache_lookup_seconds_count.exact": 8.0,
        "perfkit_cache_lookup_seconds_sum.exact": 0.003,
        "perfkit_cache_lookup_seconds_count.store": 4.0,
        "perfkit_cache_lookup_seconds_sum.store": 0.003,
    }
    s = _result(dataclasses.replace(point, server=server)).summary()
    lookup_p50 = 0.25 + 0.25 * (4 - 1) / 7
    store_p50 = 0.5 + 0.5 * 2 / 4
    assert abs(s["miss_overhead_ms_p50_server"] - (lookup_p50 + store_p50)) < 1e-9
    assert "1 ms" in conclusion(_result(dataclasses.replace(point, server=server)))


C2_REDUCTION = "C2:mean response reduction at the measured hit rate"


def test_c2_is_judged_on_the_reduction_at_the_claim_point_against_no_cache():
    """No cache: every request 1000 ms. The claim point (redis-exact at 50% hits): hits 10 ms and misses 100 ms, a cut
    of 94.5% whatever the resampling (every mean lies in 10..100 ms: 90..99%), or hits 900 and misses 1000 ms: 5%."""
    none = dataclasses.replace(_point([], [1000.0] * 12), variant="none", target=0.0)
    fast = _result(none, _point([10.0] * 6, [100.0] * 6)).summary()
    assert fast["latency_ms_mean_uncached"] == 1000.0 and fast["c2_hit_rate_pct"] == 50.0
    assert abs(fast["mean_latency_reduction_pct"] - 94.5) < 1e-9
    assert 90 <= fast["mean_latency_reduction_pct_ci_low"] <= 94.5 <= fast["mean_latency_reduction_pct_ci_high"] <= 99
    claims = judged("cache", fast)
    assert claims[C2_REDUCTION].status == "holds" and claims[C2_REDUCTION].measured == fast["mean_latency_reduction_pct"]
    assert claims["C2:mean response before"].status == "different test bed" and claims["C2:mean response before"].measured == 1000.0
    slow = _result(none, _point([900.0] * 6, [1000.0] * 6)).summary()
    assert abs(slow["mean_latency_reduction_pct"] - 5.0) < 1e-9
    assert judged("cache", slow)[C2_REDUCTION].status == "does not hold"
    assert judged("cache", _result(none).summary())[C2_REDUCTION].status == "not measured yet"  # no claim point


def test_cache_stage_smoke(perfkit_root: Path) -> None:
    summary = json.loads(run_stage("cache", smoke=True, root=perfkit_root).read_text())["summary"]
    points = pd.read_csv(smoke_experiments(perfkit_root) / "cache" / "points.csv")
    assert set(points["variant"]) == {"none", "redis-exact", "redis-semantic"}  # the smoke's (memory: test_serving_cache)
    assert (points[points["variant"] == "none"]["hit_rate"] == 0).all()
    for _, row in points.iterrows():
        assert row["errors_5xx"] == 0
        assert abs(row["hit_rate"] - row["planned_hit_rate"]) < 0.15 or row["variant"] == "redis-semantic"
    assert summary["fault_5xx"] == 0 and summary["fault_lost_requests"] == 0
    assert summary["flood_evictions"] > 0 and summary["flood_redis_used_mb"] <= summary["flood_max_memory_mb"] * 1.05
    assert summary["prefix_same_tokens"] is True
    assert summary["miss_overhead_ms_p50_server"] > 0  # the server's step buckets reached the summary
    assert 0 < summary["cache_hit_rate"] <= 1 and "mean_latency_reduction_pct" in summary
    assert "claims" not in summary  # the report judges C2 on this summary
    c2 = judged("cache", summary)[C2_REDUCTION]
    assert c2.measured == summary["mean_latency_reduction_pct"]
    assert (c2.low, c2.high) == (summary["mean_latency_reduction_pct_ci_low"], summary["mean_latency_reduction_pct_ci_high"])
    assert c2.status in ("holds", "does not hold", "inconclusive")  # judged on its interval, not left unmeasured
    assert judged("cache", summary)["C2:mean response before"].measured == summary["latency_ms_mean_uncached"]
    thresholds = pd.read_csv(smoke_experiments(perfkit_root) / "cache" / "thresholds.csv")
    assert (thresholds["wrong_hits"] <= thresholds["hits"]).all()
    prefix = pd.read_csv(smoke_experiments(perfkit_root) / "cache" / "prefix.csv")
    assert set(prefix["where"]) == {"offline", "served"} and set(prefix["reuse"]) == {True, False}
