"""Per-token figures, goodput, the p99 rule, time slices, energy and the vLLM / guidellm files, on fixed timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perfkit.energy import EnergyMeter
from perfkit.load.interchange import ResultFormatError, read_result, to_vllm
from perfkit.load.results import RequestTiming, summarize
from perfkit.load.serving_metrics import attainment_lower_bound, pooled_quantiles
from perfkit.load.timeslices import slice_edges, time_slices, trend
from perfkit.measure import P99_MIN_SAMPLES, Latency


def _row(index: int, t_send: float, chunks: tuple[float, ...], status: int = 200, warmup: bool = False) -> RequestTiming:
    ok = status == 200
    return RequestTiming(
        index=index,
        t_send=t_send,
        e2e_s=chunks[-1] if chunks else 0.05,
        status=status,
        ttft_s=chunks[0] if ok else None,
        output_tokens=len(chunks) if ok else 0,
        prompt_tokens=10,
        done=ok,
        warmup=warmup,
        chunk_s=chunks if ok else (),
    )


ROWS = [
    _row(0, 100.0, (0.1, 0.2, 0.4)),  # gaps 100, 200 ms; TTFT 100 ms, TPOT 150 ms: meets both bounds (300, 151 ms)
    _row(1, 100.0, (0.5, 0.8)),  # gap 300 ms; TTFT 500 ms: misses the TTFT bound
    _row(2, 100.0, (), status=500),  # failed after 50 ms: counts, never meets
]


def test_itl_is_the_gaps_between_chunks_pooled_over_requests_and_the_second_token_is_the_second_chunk() -> None:
    s = summarize(ROWS, mode="open", users=1, objectives_ms=(300.0, 151.0))
    assert s.itl is not None and s.itl.latency.count == 3  # 2 + 1 gaps, the failed request has none
    assert s.itl.latency.p50 == pytest.approx(200.0) and s.itl.latency.max == pytest.approx(300.0)
    assert s.ttst is not None and sorted([s.ttst.latency.min, s.ttst.latency.max]) == pytest.approx([200.0, 800.0])
    assert ROWS[0].itl_s == pytest.approx((0.1, 0.2)) and ROWS[1].ttst_s == 0.8 and _row(3, 0.0, (0.2,)).ttst_s is None
    m = s.as_metrics()
    assert m["itl_ms_p50"] == pytest.approx(200.0) and "itl_ms_p99" not in m  # 3 gaps: no p99, its maximum stands


def test_goodput_counts_requests_within_every_bound_and_a_failure_never_meets() -> None:
    s = summarize(ROWS, mode="open", users=1, objectives_ms=(300.0, 151.0))
    g = s.goodput
    assert g is not None and (g.met, g.requests) == (1, 3) and g.share == pytest.approx(1 / 3)
    assert g.rate_rps == pytest.approx(1 / 0.8)  # one met request over the window 100.0 .. 100.8
    assert s.as_metrics()["goodput_requests_met"] == 1
    stricter = summarize(ROWS, mode="open", users=1, objectives_ms=(300.0, 149.0)).goodput
    assert stricter is not None and stricter.met == 0  # request 0's 150 ms per token now breaks the TPOT bound


def test_attainment_is_shown_only_where_the_count_supports_it() -> None:
    assert attainment_lower_bound(30, 30) == pytest.approx(0.05 ** (1 / 30))  # 90.5%: 30 clean requests bound little
    assert attainment_lower_bound(299, 299) >= 0.99 > attainment_lower_bound(298, 298)  # a 99% claim needs 299
    assert attainment_lower_bound(0, 10) == 0.0 and attainment_lower_bound(5, 0) == 0.0


def test_a_p99_is_reported_only_from_enough_samples() -> None:
    assert P99_MIN_SAMPLES == 299
    few, enough = Latency.from_samples([0.1] * 298), Latency.from_samples([0.1] * 299)
    assert not few.p99_reliable and enough.p99_reliable
    assert "x_ms_p99" not in few.as_metrics("x") and few.as_metrics("x")["x_ms_max"] == pytest.approx(100.0)
    assert enough.as_metrics("x")["x_ms_p99"] == pytest.approx(100.0)


def test_intervals_resample_whole_requests() -> None:
    same = pooled_quantiles([(0.01, 0.02, 0.03)] * 50)  # every request alike: resampling requests cannot move the median
    assert same is not None and same.p50_ci == pytest.approx((20.0, 20.0))
    mixed = pooled_quantiles([(0.01,) * 10] * 25 + [(0.05,) * 10] * 25)
    assert mixed is not None and mixed.p50_ci is not None and mixed.p50_ci[0] < mixed.p50_ci[1]
    assert pooled_quantiles([(), ()]) is None


def test_time_slices_cover_the_window_and_the_trend_names_a_falling_rate() -> None:
    assert slice_edges(0.0, 24.0, 10.0) == [0.0, 10.0, 24.0]  # a 4 s tail joins the slice before
    assert slice_edges(0.0, 25.0, 10.0) == [0.0, 10.0, 20.0, 25.0]
    # one request per 10 s slice: 10 tokens in each, then 12, 10, 8, 6, 4 and 2
    steady = [_row(i, 10.0 * i, tuple(0.5 + k for k in range(10))) for i in range(4)]
    slices = time_slices(steady, 0.0, 40.0, 10.0)
    assert [s.tokens for s in slices] == [10, 10, 10, 10] and trend(slices) is not None and trend(slices).direction == "flat"
    falling = [_row(i, 10.0 * i, tuple(0.5 + k * 9 / (12 - 2 * i) for k in range(12 - 2 * i))) for i in range(6)]  # 12, 10 .. 2
    t = trend(time_slices(falling, 0.0, 60.0, 10.0))
    assert t is not None and t.direction == "falling" and "degradation" in t.flag()
    assert trend(slices[:2]) is None  # two slices are not a trend


def test_the_trend_reads_only_the_slices_before_the_last_send() -> None:
    sent = [_row(i, 10.0 * i, tuple(0.5 + k for k in range(10))) for i in range(6)]  # sends at 0 .. 50 s, answers to 59.5
    s = summarize(sent, mode="open", users=1, slice_s=10.0)
    assert len(s.slices) == 6 and s.trend is not None and s.trend.slices == 5  # the slice from 50 s only drains


def test_rapl_counters_give_joules_and_a_machine_without_them_says_why(tmp_path: Path) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("900000\n")
    with EnergyMeter(tmp_path) as meter:
        (zone / "energy_uj").write_text("400000\n")  # wrapped past 1 J: 0.1 J to the wrap, 0.4 J after
    assert meter.energy.joules == pytest.approx(0.5) and meter.energy.sources == ("rapl:package-0",)
    assert meter.energy.as_metrics(10)["energy_j_per_output_token"] == pytest.approx(0.05)
    with EnergyMeter(tmp_path / "none") as absent:
        pass
    assert absent.energy.joules is None and "no RAPL counters" in absent.energy.why
    assert absent.energy.as_metrics(10) == {"energy": f"not available: {absent.energy.why}"}


def test_a_run_exported_as_vllms_result_reads_back_to_the_same_figures() -> None:
    rows = [_row(0, 99.0, (0.2, 0.3), warmup=True), *ROWS]
    s = summarize(rows, mode="closed", users=2)
    exported = json.loads(json.dumps(to_vllm(rows, s, model="m")))
    assert exported["completed"] == 2 and exported["itls"][0] == pytest.approx([0.1, 0.2]) and exported["errors"][2]
    assert exported["median_itl_ms"] == pytest.approx(200.0) and len(exported["ttfts"]) == 3  # warm-up left out
    back = read_result(exported)
    assert back.tool == "vllm bench serve" and back.summary.throughput_tok_s == pytest.approx(s.throughput_tok_s)
    assert back.summary.ttft == s.ttft and back.summary.itl is not None and back.summary.itl.latency == s.itl.latency
    vllm_only = {k: v for k, v in exported.items() if not k.startswith("perfkit_")} | {"duration": 2.0}
    plain = read_result(vllm_only)  # vLLM's own file: no send times, so the rates are over its duration
    assert plain.summary.throughput_tok_s == pytest.approx(5 / 2.0) and "duration" in plain.note


def test_a_guidellm_report_is_recomputed_from_its_request_records() -> None:
    record = {
        "request_start_time": 10.0,
        "request_end_time": 12.0,
        "time_to_first_token_ms": 500.0,
        "output_tokens": 4,
        "prompt_tokens": 32,
        "info": {"timings": {"request_start": 10.0, "first_token_iteration": 10.5, "last_token_iteration": 11.7, "token_iterations": 4}},
    }
    report = {"metadata": {"guidellm_version": "0.8.1"}, "benchmarks": [{"requests": {"successful": [record], "errored": []}}]}
    got = read_result(report)
    assert got.tool == "guidellm 0.8.1" and got.rows[0].chunk_s == pytest.approx((0.5, 0.9, 1.3, 1.7))
    assert got.summary.ttft is not None and got.summary.ttft.p50 == pytest.approx(500.0)
    assert got.summary.itl is not None and got.summary.itl.latency.p50 == pytest.approx(400.0)  # evenly spaced: its TPOT
    with pytest.raises(ResultFormatError, match="per-request records"):
        read_result({"benchmarks": [{"metrics": {}}]})  # a trimmed report: aggregates only
    with pytest.raises(ResultFormatError, match="neither|nor"):
        read_result({"something": 1})


def test_the_load_command_shows_another_tools_result_beside_its_own(tmp_path: Path, capsys) -> None:
    from perfkit.__main__ import main

    path = tmp_path / "vllm.json"
    path.write_text(json.dumps(to_vllm(ROWS, summarize(ROWS, mode="open", users=1), model="m")))
    assert main(["load", "--compare", str(path)]) == 0
    out = capsys.readouterr().out
    assert "vllm bench serve (vllm.json)" in out and "ITL p50 (ms)" in out
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["load", "--compare", str(bad)]) == 2
    assert "perfkit: error: cannot read" in capsys.readouterr().err
