"""The baseline and batching notebooks end to end in smoke mode, through the stage runner, on the tiny model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import judged, smoke_experiments

from perfkit.stage import run_stage


def _shrink(root: Path, **smoke: dict) -> None:
    """Smoke overrides smaller still (a few requests, few tokens)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["smoke"] |= {
        "workload": {"num_prompts": 4, "prompt_tokens": 24, "max_new_tokens": 4},
        "load": {"users": 2, "requests": 3, "warmup_requests": 1, "duration_s": 20},
    } | smoke
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _table(root: Path, stage: str, name: str) -> pd.DataFrame:
    return pd.read_csv(smoke_experiments(root) / stage / f"{name}.csv")


def test_baseline_stage_reports_latency_cold_start_cost_and_claims(perfkit_root: Path) -> None:
    _shrink(perfkit_root)
    metrics = json.loads(run_stage("baseline", smoke=True, root=perfkit_root).read_text())
    assert set(metrics) == {"summary"}  # per-request detail goes to the CSV tables, not metrics.json
    summary = metrics["summary"]
    assert summary["requests"] == 3 and summary["error_rate"] == 0.0
    assert summary["latency_ms_p50"] <= summary["latency_ms_p90"] and "latency_ms_p99" not in summary  # 3 requests: no p99
    assert summary["littles_law_holds"] is True
    assert summary["cold_start_s"] >= summary["model_load_s"] > 0
    assert "first_response_saving_pct" not in summary  # one start of its own: C19's starts run in the optimized stage
    assert summary["peak_rss_mb"] > 0
    assert summary["cost_usd_per_1k_req"] > 0 and summary["qps_per_usd_month"] > 0
    assert summary["p99_reliable"] is False  # 3 requests: p99 flagged
    timings = _table(perfkit_root, "baseline", "timings")
    measured = timings[~timings["warmup"]]
    assert len(measured) == 3 and (measured["status"] == 200).all() and (measured["ttft_s"] <= measured["e2e_s"]).all()
    assert summary["first_response_s"] > 0
    assert "claims" not in summary  # the stage measures; the report judges its summary
    claims = judged("baseline", summary)
    assert claims["C1:mean latency at 10 users"].status == "different test bed"
    assert claims["C1:mean latency at 10 users"].measured == summary["latency_ms_mean"]
    assert "C19:first-response saving from warm-up" not in claims  # judged on the optimized stage's cold-start block
    assert (smoke_experiments(perfkit_root) / "baseline" / "baseline.html").is_file()
    assert _table(perfkit_root, "baseline", "trends")["run"].tolist() == ["baseline"]  # the served pages' time slices
    from perfkit.__main__ import main

    assert main(["export", "baseline", "--smoke", "--out", str(perfkit_root / "export")]) == 0
    exported = json.loads((perfkit_root / "export" / "baseline.json").read_text())
    assert exported["completed"] == 3 and exported["ttfts"] == pytest.approx(measured["ttft_s"].tolist())


def test_batching_stage_compares_schedulers_with_the_offline_engine(perfkit_root: Path) -> None:
    light = {"light_load_requests": 3, "light_load_max_new_tokens": 2}
    _shrink(perfkit_root, batching={"max_batch_sizes": [2], "offline_repeats": 1, "scrape_interval_s": 0.02} | light)
    summary = json.loads(run_stage("batching", smoke=True, root=perfkit_root).read_text())["summary"]
    table = _table(perfkit_root, "batching", "variants").set_index("variant")
    assert list(table.index) == ["sequential", "dynamic-b2", "continuous-b2"]
    seq, dyn, cont = (table.loc[n] for n in table.index)
    assert summary["rounds"] == 2 and (table["rounds"] == 2).all()  # smoke: measure.rounds 2
    assert seq["mean_batch_size"] == 1.0  # sequential never batches
    for v in (dyn, cont):
        assert 1.0 <= v["mean_batch_size"] <= 2.0  # never more than max_batch_size or the users in flight
    rounds = _table(perfkit_root, "batching", "rounds")
    # Interleaved: round 0 of every variant, then round 1 of every variant; each round its own offline run.
    assert list(zip(rounds["variant"], rounds["round"])) == [(v, r) for v in table.index for r in (0, 1)]
    assert (rounds["offline_width"] == rounds["mean_batch_size"].round().clip(lower=1)).all()  # like for like
    for v in (seq, dyn, cont):
        assert v["error_rate"] == 0.0 and v["offline_tok_s"] > 0 and v["served_vs_offline_ratio"] > 0
        assert v["throughput_tok_s_ci_low"] <= v["throughput_tok_s"] <= v["throughput_tok_s_ci_high"]
    for key in ("speedup_vs_sequential", "continuous_vs_dynamic", "offline_tok_s_batch1", "served_vs_offline_ratio"):
        assert summary[f"{key}_ci_low"] <= summary[key] <= summary[f"{key}_ci_high"]
    assert summary["offline_prefill_ms_per_row_batch1"] > 0
    assert seq["requests_per_prefill"] == 1.0 and 1.0 <= cont["requests_per_prefill"] <= 2.0
    low, high, target = (summary[k] for k in ("speedup_vs_sequential_ci_low", "speedup_vs_sequential_ci_high", "target_speedup"))
    assert summary["speedup_target"] == ("met" if low >= target else "not met" if high < target else "inconclusive")
    # The offline target is judged unless the served rate lies above its engine's interval (a measurement fault).
    assert ("offline_target" in summary) != summary["served_above_engine"]
    assert (smoke_experiments(perfkit_root) / "batching" / "batch_sizes.csv").is_file()
    # The light open-loop load: 3 requests in 2 blocks (2 + 1) on a sequential and a dynamic-b2 server, paired; too few.
    assert summary["light_load_pairs"] == 3 and summary["light_load_blocks"] == 2 and summary["light_load_tests_wait"] is False
    assert "added_wait_ms_mean_batch2" in summary and summary["light_load_rate_rps"] > 0
    assert len(_table(perfkit_root, "batching", "light_load")) == 3


def _variant(name: str, scheduler: str, b: int, served: list[float], offline: list[float], fill_ms: list[float] | None = None):
    from perfkit.hardware import ResourceUsage
    from perfkit.load.results import RequestTiming, summarize
    from perfkit.load.runner import LoadRun
    from perfkit.stages.batching.result import Offline, Round, Variant

    rows = [RequestTiming(index=i, t_send=float(i), e2e_s=1.0, status=200, ttft_s=0.1, output_tokens=10, done=True) for i in range(10)]
    load = LoadRun(tuple(rows), summarize(rows, mode="closed", users=10), 10.0, Path("locust.log"))
    rounds = tuple(
        Round(
            i,
            load,
            ResourceUsage(cpu_util_pct=50.0),
            10.0,
            s,
            3.0,
            float(b),
            float(b),
            40.0,
            None if fill_ms is None else fill_ms[i],
            {str(b): 10.0},
            Offline(b, 10, (b * 10 / o,) * 3, 0.1),
        )  # three identical batches: exactly `o` tokens/s
        for i, (s, o) in enumerate(zip(served, offline))
    )
    return Variant(name, scheduler, b, rounds)


def _result(*variants, max_wait_ms: float = 20.0):
    from perfkit.measure import Spread
    from perfkit.stages.batching.result import BatchingResult

    return BatchingResult(tuple(variants), {1: Spread((12.0, 12.0, 12.0))}, 10, 128, 0.8, 3.0, max_wait_ms)


def test_batching_targets_are_judged_on_paired_intervals() -> None:
    # Sequential drifts 10 -> 12 -> 11 and dynamic with it: the paired speed-up is exactly 4 in every round.
    seq = _variant("sequential", "sequential", 1, [10.0, 12.0, 11.0], [11.0, 13.0, 12.0])
    dyn = _variant("dynamic-b8", "dynamic", 8, [40.0, 48.0, 44.0], [45.0, 53.0, 50.0], fill_ms=[8.0, 9.0, 10.0])
    summary = _result(seq, dyn).metrics()["summary"]
    assert summary["speedup_vs_sequential"] == pytest.approx(4.0)
    assert summary["speedup_vs_sequential_ci_low"] == pytest.approx(4.0) == summary["speedup_vs_sequential_ci_high"]
    assert summary["speedup_target"] == "met" and summary["served_above_engine"] is False
    assert summary["offline_target"] == "met"  # 88-90% of the engine in each round, target 80%
    assert summary["dynamic_tok_s_ci_low"] < 40.0 and summary["dynamic_tok_s_ci_high"] > 48.0  # t over 3 rounds is wide
    # Every round ran full batches of 8: utilization 100% in each, 92% claimed.
    assert summary["batch_utilization_pct_batch8"] == pytest.approx(100.0)
    assert summary["max_wait_ms"] == 20.0
    claims = judged("batching", summary)
    assert claims["C17:utilization: rows per decode step, % of the batch width 8"].status == "holds"
    assert claims["C17:GPU utilization (NVML)"].status == "not measurable here"


WAIT = "C17:mean wait batching adds at batch 8 (time to first token against a sequential server, a light open-loop load)"


def _light(added_ms: list[float], share: float = 0.3):
    """The light load's two blocks per server, the same request indices in each block. The machine drifts: the first
    token at 200 ms on the sequential server in block 1, 300 ms in block 2; the batched server `added_ms` later than
    the sequential one in the same block (a pairing across blocks would read 100 ms more or less)."""
    from perfkit.load.results import RequestTiming, summarize
    from perfkit.load.runner import LoadRun
    from perfkit.stages.batching.light_load import LightLoad

    def run(base_s: float, extra: list[float]) -> LoadRun:
        rows = [RequestTiming(index=i, t_send=float(i), e2e_s=0.5, status=200, ttft_s=base_s + e / 1000, output_tokens=4, done=True)
                for i, e in enumerate(extra)]  # fmt: skip
        return LoadRun(tuple(rows), summarize(rows, mode="open", users=1), 10.0, Path("locust.log"))

    half = len(added_ms) // 2
    blocks = [(0.2, added_ms[:half]), (0.3, added_ms[half:])]
    return LightLoad(
        share / 0.5,
        0.5,
        4,
        8,
        "dynamic",
        20.0,
        tuple(run(base, [0.0] * len(extra)) for base, extra in blocks),
        tuple(run(base, extra) for base, extra in blocks),
    )


def test_the_wait_batching_adds_is_judged_from_the_light_load_paired_by_request() -> None:
    seq = _variant("sequential", "sequential", 1, [10.0, 10.0, 10.0], [11.0, 11.0, 11.0])
    dyn = _variant("dynamic-b8", "dynamic", 8, [40.0, 40.0, 40.0], [45.0, 45.0, 45.0], fill_ms=[20.0, 20.0, 20.0])
    window = replace(_result(seq, dyn), light=_light([20.0] * 40))  # each request waits out the 20 ms window
    summary = window.metrics()["summary"]
    assert summary["added_wait_ms_mean_batch8"] == pytest.approx(20.0) and summary["light_load_pairs"] == 40
    assert summary["light_load_share_pct"] == pytest.approx(30.0) and summary["light_load_tests_wait"] is True
    assert judged("batching", summary)[WAIT].status == "does not hold"  # 20 ms against at most 16.5
    short = judged("batching", replace(window, light=_light([10.0, 14.0] * 20)).metrics()["summary"])[WAIT]
    assert short.status == "holds" and short.measured == pytest.approx(12.0)
    few = judged("batching", replace(window, light=_light([10.0] * 12)).metrics()["summary"])[WAIT]
    assert few.status == "not tested here" and "12 requests" in few.why
    busy = judged("batching", replace(window, light=_light([10.0] * 40, share=0.6)).metrics()["summary"])[WAIT]
    assert busy.status == "not tested here" and "60%" in busy.why
    assert "about the fill window" in window.conclusion() and len(window.tables()["light_load"]) == 40
    names = [name for name in window.load_runs() if name.startswith("light")]
    assert names == [
        "light load, sequential, block 1",
        "light load, dynamic, block 1",
        "light load, dynamic, block 2",
        "light load, sequential, block 2",
    ]  # ABBA


def test_a_straddling_interval_is_inconclusive_and_a_served_rate_above_its_engine_is_a_fault() -> None:
    seq = _variant("sequential", "sequential", 1, [10.0, 10.0, 10.0], [11.0, 11.0, 11.0])
    # Speed-ups 2.5, 3.5, 3.0: mean 3.0, the interval straddles the 3x target.
    dyn = _variant("dynamic-b8", "dynamic", 8, [25.0, 35.0, 30.0], [40.0, 40.0, 40.0], fill_ms=[5.0, 30.0, 15.0])
    summary = _result(seq, dyn, max_wait_ms=100.0).metrics()["summary"]
    assert summary["speedup_target"] == "inconclusive"
    table = _result(seq, dyn).variant_table().set_index("variant")
    assert "noisy" in table.loc["dynamic-b8", "throughput_tok_s_flags"]  # CV between rounds 17% > 5%
    assert table.loc["sequential", "throughput_tok_s_flags"] == ""

    above = _variant("dynamic-b8", "dynamic", 8, [50.0, 51.0, 49.0], [40.0, 40.5, 39.5], fill_ms=[5.0, 5.0, 5.0])
    result = _result(seq, above)
    summary = result.metrics()["summary"]
    assert summary["served_above_engine"] is True and "offline_target" not in summary
    assert result.variant_table().set_index("variant").loc["dynamic-b8", "served_above_engine"]


@pytest.mark.parametrize("blocks", [1, 3])
def test_the_light_load_refuses_block_counts_that_do_not_alternate_evenly(blocks: int) -> None:
    from conftest import REPO

    from perfkit import config
    from perfkit.config import ConfigError

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["batching"]["light_load_blocks"] = blocks
    with pytest.raises(ConfigError, match="batching.light_load_blocks"):
        config.parse(raw, root=REPO, stage="batching")
