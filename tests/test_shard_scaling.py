"""The scaling model, the launcher's command and device choice, and the stage result's verdicts (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perfkit.optim import shard_launch
from perfkit.optim import shard_scaling as sc


def test_gpt_fast_published_curve_fits_a_plus_b_over_n_within_two_percent() -> None:
    a, b, error = sc.fit_inverse(sc.GPT_FAST_TOK_S)
    assert a == pytest.approx(2.11e-3, rel=0.02) and b == pytest.approx(7.42e-3, rel=0.02)
    assert error < 0.02


def test_fit_link_recovers_latency_and_bandwidth() -> None:
    latency, bandwidth = 50e-6, 2e9
    rows = [{"bytes": n, "seconds": latency + n / bandwidth} for n in (2304, 18432, 65536, 1048576)]  # ring factor 1 at N = 2
    link = sc.fit_link(rows, n=2)
    assert link.latency_s == pytest.approx(latency, rel=1e-6) and link.bytes_per_s == pytest.approx(bandwidth, rel=1e-6)
    assert link.allreduce_s(1000, 1) == 0.0


def test_step_model_shares_work_and_adds_two_allreduces_per_layer() -> None:
    link = sc.Link("x", latency_s=1e-3, bytes_per_s=float("inf"))
    model = sc.StepModel(serial_s=0.002, sharded_s=0.008, calls=4, bytes_per_call=100)
    assert model.step_s(1, link) == pytest.approx(0.010)
    assert model.step_s(2, link) == pytest.approx(0.002 + 0.004 + 4e-3)
    assert model.step_s(2, link, share=2 / 3) > model.step_s(2, link)  # an uneven split is paced by its busiest rank
    pieces = sc.measured_pieces(0.010, 0.006, 0.003, layers=30, hidden=576, rows=1, dtype_bytes=4, vocab_split=True)
    assert pieces.sharded_s == pytest.approx(0.009) and pieces.calls == 61


def test_weight_model_for_a_13b_model_is_bandwidth_bound() -> None:
    steps = sc.weight_pieces(params_b=13.0, layers=40, hidden=5120, vocab=32000, dtype_bytes=2, bytes_per_s=1555e9)
    assert steps.step_s(1, sc.Link("n", 0, 1)) == pytest.approx(26e9 / 1555e9 - 32000 * 5120 * 2 / 1555e9, rel=1e-6)
    nvlink, ethernet = sc.Link("nvlink", 10e-6, 300e9), sc.Link("25gbe", 50e-6, 3.125e9)
    assert 1 < steps.speedup(4, ethernet) < steps.speedup(4, nvlink) < 4


def test_model_check_refuses_a_noisy_measurement() -> None:
    assert sc.Check(2, 0.011, 0.010, step_cv=0.05, max_cv=0.1).status == "within 20%"
    assert sc.Check(2, 0.015, 0.010, step_cv=0.05, max_cv=0.1).status == "outside 20%"
    assert sc.Check(2, 0.010, 0.010, step_cv=0.3, max_cv=0.1).status.startswith("too noisy to check")


def test_model_check_is_not_made_where_ranks_take_turns_on_the_cores() -> None:
    fits = sc.Check(2, 0.010, 0.010, step_cv=0.05, max_cv=0.1, threads=2, cores=2)
    crowded = sc.Check(3, 0.010, 0.050, step_cv=0.05, max_cv=0.1, threads=3, cores=2)
    assert fits.checked and fits.status == "within 20%"
    assert not crowded.checked and crowded.oversubscribed and "3 threads over 2 cores" in crowded.status


def test_gpu_ranks_use_nccl_and_one_device_each() -> None:
    assert shard_launch.backend_for("cuda") == "nccl" and shard_launch.backend_for("cpu") == "gloo"
    assert shard_launch.rank_device("cuda", 3) == torch.device("cuda:3")
    assert shard_launch.rank_device("cpu", 3) == torch.device("cpu")


def test_torchrun_command_stays_local_and_fails_fast(tmp_path: Path) -> None:
    cmd = shard_launch.torchrun_command(3, ["shard-bench"], log_dir=tmp_path, shutdown_timeout_s=2)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc-per-node=3" in cmd and "--max-restarts=0" in cmd
    assert "--shutdown-timeout=2" in cmd and cmd[-3:] == ["-m", "perfkit", "shard-bench"]


def _raw(world: int, step_s: float, e2e_s: float, weight: list[int], comm_s: float = 0.0) -> dict:
    run = {
        "e2e_s": e2e_s,
        "ttft_s": e2e_s / 4,
        "step_s": [step_s] * 3,
        "comm_s": [comm_s] * 3,
        "comm_calls": [4.0] * 3,
        "comm_bytes": [1152.0 * (world > 1)] * 3,
        "layers_s": [step_s * 0.8] * 3,
        "head_s": [step_s * 0.1] * 3,
        "prefill_comm_s": 0.0,
        "rows": 1,
    }
    ranks = [
        {
            "rank": r,
            "threads": 1,
            "weight_bytes": w,
            "weight_private_mb": w / 2**20,
            "load_peak_private_mb": w / 2**20,
            "bytes_read": w,
            "checkpoint_bytes": weight[0] if world == 1 else sum(weight),
            "q_heads": 2,
            "kv_heads": 1,
        }
        for r, w in enumerate(weight)
    ]
    raw = {
        "world": world,
        "embedding": "replicated",
        "imbalance": 1.0,
        "dtype": "float32",
        "layers": 2,
        "hidden": 72,
        "allreduce_bytes_per_token_from_shapes": 1152 * (world > 1),
        "ranks": ranks,
        "ranks_agree": True,
        "exactness": {"tokens_identical": True, "identical_prompts": 2, "max_logit_diff": 1e-6},
        "load_avg": [1.0],
        "speed": {"capped": False, "batch1": [run, run]},
    }
    if world > 1:
        raw["allreduce"] = [{"bytes": 288, "seconds": 1e-4}, {"bytes": 2304, "seconds": 1.1e-4}]
    return raw


def _result(raw: dict[int, dict], cores: int = 0):
    pytest.importorskip("perfkit.stages.base")
    from perfkit.stages.sharding.result import RankRun, ShardingResult

    links = {"nvlink": sc.Link("nvlink", 10e-6, 300e9)}
    model = {"name": "llama-2-13b", "params_b": 13.0, "layers": 40, "hidden": 5120, "vocab": 32000, "dtype_bytes": 2, "devices": 4}
    return ShardingResult(tuple(RankRun.of(r) for r in raw.values()), raw, None, 0.1, 1e-3, links, 1555e9, model, cores=cores)


def test_c5_is_judged_only_where_four_ranks_ran() -> None:
    from conftest import judged

    two = _result({1: _raw(1, 0.010, 0.40, [1000]), 2: _raw(2, 0.008, 0.30, [700, 600], comm_s=0.002)})
    summary = two.summary()
    assert summary["speedup_n2"] == pytest.approx(0.40 / 0.30) and summary["efficiency_n2"] == pytest.approx(0.40 / 0.30 / 2)
    assert summary["comm_share_n2"] == pytest.approx(0.25) and "speedup_4_ranks" not in summary
    assert summary["claim_devices"] == 4 and summary["claim_ranks_measured"] is False
    verdict = judged("sharding", summary)["C5:speed-up at 4 ranks"]
    assert verdict.status == "not tested here" and verdict.measured is None
    assert verdict.why.startswith("4 ranks were not measured here (ranks 1,2)")  # the why, formatted from the summary
    four = _result({1: _raw(1, 0.010, 0.40, [1000]), 4: _raw(4, 0.004, 0.10, [400, 400, 400, 400])})
    summary = four.summary()
    assert summary["speedup_4_ranks"] == pytest.approx(4.0) and summary["claim_ranks_measured"] is True
    assert judged("sharding", summary)["C5:speed-up at 4 ranks"].status == "holds"


def test_the_scaling_model_is_shown_only_where_it_met_a_measurement() -> None:
    from conftest import judged

    def two(step_s: float = 0.008, cores: int = 2):
        return _result({1: _raw(1, 0.010, 0.40, [1000]), 2: _raw(2, step_s, 0.30, [700, 600], comm_s=0.002)}, cores)

    model = "C5:scaling model: 13B on 4 devices over NVLink"
    # 2 ranks of 1 thread on 2 cores: the model's 2-rank step (about 7 ms) is within 20% of the 8 ms measured.
    summary = two().summary()
    assert summary["measured_step_ms_n2"] == pytest.approx(8.0) and summary["model_tolerance_pct"] == 20.0
    assert summary["model_error_pct_n2"] == pytest.approx(100 * (summary["model_step_ms_n2"] / 8.0 - 1))
    assert -20 <= summary["model_error_pct_n2"] < 0 and summary["model_check_n2"] == "within 20%"
    assert summary["model_validated"] is True
    assert summary["model_vs_gpt_fast_pct"] == pytest.approx(
        100 * (summary["model_speedup_gpt_fast_4"] / summary["gpt_fast_speedup_4"] - 1)
    )
    shown = judged("sharding", summary)[model]
    assert shown.status == "simulated" and shown.measured == summary["model_speedup_claim_nvlink"]
    # The same on 1 core: the ranks take turns, which the model does not describe; no check is made, so it is withheld.
    crowded = two(cores=1).summary()
    assert crowded["model_checked_n2"] is False and crowded["model_validated"] is False
    assert crowded["model_check_n2"].startswith("2 threads over 1 cores")
    assert "model_error_pct_n2" in crowded  # reported whether or not the check was made
    withheld = judged("sharding", crowded)[model]
    assert withheld.status == "not tested here" and "the scaling model is withheld" in withheld.why
    assert "against 8 ms measured" in withheld.why and "2 threads over 1 cores" in withheld.why and "gpt-fast" in withheld.why
    # A 4 ms step measured: the model is off by more than 20%, so it is withheld too.
    off = two(step_s=0.004).summary()
    assert off["model_check_n2"] == "outside 20%" and off["model_validated"] is False
    assert judged("sharding", off)[model].status == "not tested here"


def test_busiest_rank_share_from_weight_bytes() -> None:
    pytest.importorskip("perfkit.stages.base")
    from perfkit.stages.sharding.result import busiest_share

    # replicated 400 + sharded 600 split 400/200: the busiest rank holds 2/3 of the sharded part
    assert busiest_share(_raw(2, 0.01, 0.1, [800, 600]), 1000) == pytest.approx(2 / 3)
    assert busiest_share(_raw(1, 0.01, 0.1, [1000]), 1000) == 1.0
