"""The baseline and batching notebooks end to end in smoke mode, through the stage runner, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO

from perfkit.stage import run_stage


def _shrink(root: Path, **smoke: dict) -> None:
    """The claims table beside the params, and smoke overrides smaller still (a few requests, few tokens)."""
    (root / "data" / "claims.yaml").symlink_to(REPO / "data" / "claims.yaml")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["smoke"] |= {"workload": {"num_prompts": 4, "prompt_tokens": 24, "max_new_tokens": 4},
                        "load": {"users": 2, "requests": 3, "warmup_requests": 1, "duration_s": 20}} | smoke
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _table(root: Path, stage: str, name: str) -> pd.DataFrame:
    return pd.read_csv(root / "experiments" / stage / f"{name}.csv")


def test_baseline_stage_reports_latency_cold_start_cost_and_claims(perfkit_root: Path) -> None:
    _shrink(perfkit_root)
    metrics = json.loads(run_stage("baseline", smoke=True, root=perfkit_root).read_text())
    assert set(metrics) == {"summary"}  # per-request detail goes to the CSV tables, not metrics.json
    summary = metrics["summary"]
    assert summary["requests"] == 3 and summary["error_rate"] == 0.0
    assert summary["latency_ms_p50"] <= summary["latency_ms_p99"]
    assert summary["littles_law_holds"] is True
    assert summary["cold_start_s"] >= summary["model_load_s"] > 0
    assert summary["cold_start_s_no_warmup"] > 0 and "first_response_saving_pct" in summary
    assert summary["peak_rss_mb"] > 0
    assert summary["cost_usd_per_1k_req"] > 0 and summary["qps_per_usd_month"] > 0
    assert summary["p99_reliable"] is False  # 3 requests: p99 flagged
    timings = _table(perfkit_root, "baseline", "timings")
    measured = timings[~timings["warmup"]]
    assert len(measured) == 3 and (measured["status"] == 200).all() and (measured["ttft_s"] <= measured["e2e_s"]).all()
    claims = summary["claims"]
    assert claims["C1:mean latency at 10 users"]["status"] == "different test bed"
    c19 = claims["C19:first-response saving from warm-up"]
    assert c19["measured"] == summary["first_response_saving_pct"]
    assert c19["status"] == ("holds" if c19["measured"] >= 0 else "does not hold")
    assert (perfkit_root / "experiments" / "baseline" / "baseline.html").is_file()


def test_batching_stage_compares_schedulers_with_the_offline_engine(perfkit_root: Path) -> None:
    _shrink(perfkit_root, batching={"max_batch_sizes": [2], "offline_repeats": 1})
    summary = json.loads(run_stage("batching", smoke=True, root=perfkit_root).read_text())["summary"]
    table = _table(perfkit_root, "batching", "variants").set_index("variant")
    assert list(table.index) == ["sequential", "dynamic-b2", "continuous-b2"]
    seq, dyn, cont = (table.loc[n] for n in table.index)
    assert seq["mean_batch_size"] == 1.0  # sequential never batches
    for v in (dyn, cont):
        assert 1.0 <= v["mean_batch_size"] <= 2.0  # never more than max_batch_size or the users in flight
    assert seq["batches"] >= seq["requests"]  # warm-up and load requests each ran as a batch of one
    assert summary["continuous_vs_dynamic"] == pytest.approx(cont["throughput_tok_s"] / dyn["throughput_tok_s"])
    for v in (seq, dyn, cont):
        assert v["error_rate"] == 0.0 and v["offline_tok_s"] > 0 and v["served_vs_offline_ratio"] > 0
    assert summary["offline_tok_s_batch1"] > 0 and summary["offline_prefill_ms_per_row_batch1"] > 0
    assert seq["requests_per_prefill"] == 1.0 and 1.0 <= cont["requests_per_prefill"] <= 2.0
    assert summary["speedup_vs_sequential"] == pytest.approx(dyn["throughput_tok_s"] / seq["throughput_tok_s"])
    assert summary["speedup_target_met"] == (summary["speedup_vs_sequential"] >= 3.0)
    # The offline target is judged unless the served rate beats the in-process engine, which flags the run instead.
    assert isinstance(summary.get("offline_target_met"), bool) != bool(summary.get("offline_suspect"))
    assert (perfkit_root / "experiments" / "batching" / "batch_sizes.csv").is_file()


def _variant(name: str, scheduler: str, b: int, tok_per_request: int, offline: float):
    from perfkit.stages.batching.result import Variant
    from perfkit.hardware import ResourceUsage
    from perfkit.load.results import RequestTiming, summarize
    from perfkit.load.runner import LoadRun

    rows = [RequestTiming(index=i, t_send=float(i), e2e_s=1.0, status=200, ttft_s=0.1, output_tokens=tok_per_request,
                          done=True) for i in range(10)]
    run = LoadRun(tuple(rows), summarize(rows, mode="closed", users=10), 10.0, Path("locust.log"))
    return Variant(name, scheduler, b, run, ResourceUsage(cpu_util_pct=50.0), 10.0, float(b), 5.0, {}, offline)


def test_batching_targets_are_judged_and_an_implausible_offline_run_is_flagged_not_judged() -> None:
    from perfkit.stages.batching.result import BatchingResult

    seq = _variant("sequential", "sequential", 1, 10, offline=12.0)
    fast = _variant("dynamic-b8", "dynamic", 8, 40, offline=45.0)  # 4x sequential, 89% of offline
    result = BatchingResult((seq, fast), {1: 12.0, 8: 45.0}, 10, 128, 0.8, 3.0, 20.0)
    summary = result.metrics()["summary"]
    assert summary["speedup_vs_sequential"] == 4.0 and summary["speedup_target_met"] is True
    assert summary["offline_target_met"] is True and "offline_suspect" not in summary

    slow_offline = _variant("dynamic-b8", "dynamic", 8, 40, offline=20.0)  # served 2x the in-process engine
    summary = BatchingResult((seq, slow_offline), {1: 12.0, 8: 20.0}, 10, 128, 0.8, 3.0, 20.0).metrics()["summary"]
    assert summary["offline_suspect"] is True and "offline_target_met" not in summary
