"""The load results math on synthetic timings: distributions, rates, errors, Little's law, cost."""

from __future__ import annotations

import json
import math

import pytest

from perfkit.config import CostConfig
from perfkit.costs import cost_of
from perfkit.load.results import RequestTiming, read_timings, share_after, summarize
from perfkit.serving.metrics import bucket_counts, histogram_delta, histogram_quantile


def _ok(index: int, t_send: float, e2e: float, ttft: float = 0.1, tokens: int = 5, **kw) -> RequestTiming:
    return RequestTiming(
        index=index, t_send=t_send, e2e_s=e2e, status=200, ttft_s=ttft, output_tokens=tokens, prompt_tokens=20, done=True, **kw
    )


def test_summary_drops_warmup_and_counts_rates_over_the_measured_window() -> None:
    rows = [_ok(0, 0.0, 50.0, warmup=True)] + [_ok(i, float(i), 1.0) for i in range(1, 5)]
    s = summarize(rows, mode="closed", users=1)
    assert s.requests == 4 and s.ok_requests == 4
    assert s.window_s == pytest.approx(4.0)  # first measured send at 1.0, last answer at 5.0
    assert s.throughput_rps == pytest.approx(1.0)
    assert s.throughput_tok_s == pytest.approx(5.0)
    assert s.prompt_tok_s == pytest.approx(20.0)
    assert s.e2e is not None and s.e2e.mean == pytest.approx(1000.0)


def test_a_closed_loop_window_opens_when_the_server_is_done_with_the_warmup() -> None:
    # A sequential server, 1 s per request, 3 users: the warm-up round is answered at 1, 2 and 3 s; each user's
    # measured request, sent on its warm-up answer, queues behind the rest of the warm-up round.
    warmup = [_ok(i, 0.0, float(i + 1), warmup=True) for i in range(3)]
    measured = [_ok(3 + i, float(i + 1), 3.0, ttft=2.1) for i in range(3)]  # sent at 1, 2, 3 s; served 3-4, 4-5, 5-6
    s = summarize(warmup + measured, mode="closed", users=3)
    assert s.window_s == pytest.approx(3.0)  # from the last warm-up answer at 3 s, not the first measured send at 1 s
    assert s.throughput_rps == pytest.approx(1.0)  # the server's real rate; from 1 s it would read 0.6
    assert s.littles_law_holds


def test_a_request_half_done_when_the_window_opens_counts_by_its_tokens_inside() -> None:
    row = _ok(0, 0.0, e2e=5.0, ttft=1.0, tokens=5)  # tokens at 1, 2, 3, 4 and 5 s
    assert share_after(row, 0.5) == 1.0
    assert share_after(row, 2.5) == pytest.approx(3 / 5)
    assert share_after(row, 2.0) == pytest.approx(3 / 5)  # the token at 2 s is before the window
    assert share_after(row, 5.0) == 0.0
    one = _ok(1, 0.0, e2e=1.0, tokens=1)
    assert (share_after(one, 0.5), share_after(one, 1.5)) == (1.0, 0.0)
    # A batching server: 2 rows in flight when the warm-up's last answer opens the window at 4 s, each with 3 of its
    # 5 tokens done; both finish at 6 s. Rate: 2 x 2 tokens in 2 s, not 2 x 5.
    warm = _ok(0, 0.0, 4.0, warmup=True)
    rows = [_ok(1 + i, 0.0, e2e=6.0, ttft=2.0, tokens=5) for i in range(2)]  # tokens at 2, 3, 4, 5, 6 s
    s = summarize([warm, *rows], mode="closed", users=3)
    assert s.window_s == pytest.approx(2.0) and s.throughput_tok_s == pytest.approx(2.0)
    assert s.throughput_rps == pytest.approx(2 * 2 / 5 / 2.0)


def test_tpot_is_decode_time_per_token_after_the_first() -> None:
    row = _ok(0, 0.0, e2e=1.0, ttft=0.2, tokens=5)
    assert row.tpot_s == pytest.approx(0.2)
    assert _ok(0, 0.0, 1.0, tokens=1).tpot_s is None
    s = summarize([row], mode="closed", users=1)
    assert s.tpot is not None and s.tpot.p50 == pytest.approx(200.0)


def test_errors_are_counted_by_status_code_and_excluded_from_latency() -> None:
    rows = [
        _ok(0, 0.0, 1.0),
        RequestTiming(index=1, t_send=0.0, e2e_s=0.01, status=429),
        RequestTiming(index=2, t_send=0.0, e2e_s=0.01, status=503),
        RequestTiming(index=3, t_send=0.0, e2e_s=0.01, status=429),
        RequestTiming(index=4, t_send=0.0, e2e_s=0.5, status=200, done=False),  # stream cut before [DONE]
    ]
    s = summarize(rows, mode="closed", users=5)
    assert s.errors_by_code == {429: 2, 503: 1, 200: 1}
    assert s.error_rate == pytest.approx(0.8)
    assert s.e2e is not None and s.e2e.count == 1
    metrics = s.as_metrics()
    assert metrics["errors_http_429"] == 2 and metrics["errors_http_503"] == 1


def test_littles_law_bounds_closed_loop_throughput() -> None:
    # 2 users, 1 s each, back to back for 10 s: 2 QPS, exactly the bound.
    rows = [_ok(i, float(i // 2), 1.0) for i in range(20)]
    s = summarize(rows, mode="closed", users=2)
    assert s.littles_law_max_qps == pytest.approx(2.0)
    assert s.littles_law_holds
    # The same rows claimed from 1 user: 2 QPS at 1 s mean latency is impossible.
    assert not summarize(rows, mode="closed", users=1).littles_law_holds


def test_open_loop_records_lag_and_flags_a_lagging_or_busy_generator() -> None:
    rows = [_ok(i, float(i), 0.5, lag_s=0.05) for i in range(5)]
    s = summarize(rows, mode="open", users=1, client_cpu_pct=95.0, max_client_cpu_pct=80.0, max_lag_ms=20.0)
    assert s.lag is not None and s.lag.p50 == pytest.approx(50.0)
    assert len(s.flags) == 2
    assert "littles_law_holds" not in s.as_metrics()
    calm = summarize([_ok(i, float(i), 0.5, lag_s=0.001) for i in range(5)], mode="open", users=1, client_cpu_pct=10.0)
    assert calm.flags == ()


def test_summary_refuses_a_run_with_only_warmup() -> None:
    with pytest.raises(ValueError, match="no measured requests"):
        summarize([_ok(0, 0.0, 1.0, warmup=True)], mode="closed", users=1)


def test_read_timings_merges_files_in_send_order_and_ignores_unknown_fields(tmp_path) -> None:
    a, b = tmp_path / "timings-worker-1.jsonl", tmp_path / "timings-worker-2.jsonl"
    a.write_text(json.dumps({"index": 0, "t_send": 2.0, "e2e_s": 1.0, "status": 200, "extra": 1}) + "\n")
    b.write_text(json.dumps({"index": 0, "t_send": 1.0, "e2e_s": 1.0, "status": 503}) + "\n\n")
    rows = read_timings([a, b])
    assert [r.t_send for r in rows] == [1.0, 2.0]
    assert [r.status for r in rows] == [503, 200]


def test_cost_per_1k_requests_and_qps_per_dollar() -> None:
    cost = cost_of(2.0, CostConfig(usd_per_hour=0.72, hours_per_month=730))
    assert cost.cost_usd_per_1k_req == pytest.approx(0.72 / 7200 * 1000)
    assert cost.usd_per_month == pytest.approx(525.6)
    assert cost.qps_per_usd_month == pytest.approx(2.0 / 525.6)
    # The article's C15: 45 QPS on an $850/month instance.
    c15 = cost_of(45.0, CostConfig(usd_per_hour=850 / 730, hours_per_month=730))
    assert c15.qps_per_usd_month == pytest.approx(0.053, abs=5e-4)
    assert math.isinf(cost_of(0.0, CostConfig()).cost_usd_per_1k_req)


def test_histogram_delta_and_buckets_turn_cumulative_prometheus_counts_into_batches() -> None:
    before = {"le=1.0": 2.0, "le=2.0": 2.0, "le=4.0": 2.0, "le=+Inf": 2.0, "count": 2.0, "sum": 2.0}
    after = {"le=1.0": 3.0, "le=2.0": 5.0, "le=4.0": 9.0, "le=+Inf": 9.0, "count": 9.0, "sum": 32.0}
    delta = histogram_delta(before, after)
    assert delta["count"] == 7.0 and delta["sum"] == 30.0
    assert bucket_counts(delta) == {"1": 1.0, "2": 2.0, "4": 4.0}


def test_histogram_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    hist = {"le=0.001": 2.0, "le=0.002": 6.0, "le=0.005": 8.0, "le=+Inf": 10.0}
    assert histogram_quantile(hist, 0.1) == pytest.approx(0.0005)  # rank 1 of 2 in [0, 1 ms]
    assert histogram_quantile(hist, 0.5) == pytest.approx(0.00175)  # rank 5: 3 of 4 into [1, 2 ms]
    assert histogram_quantile(hist, 0.95) == pytest.approx(0.005)  # in +Inf: the highest finite bound
    assert histogram_quantile({"le=0.001": 0.0, "le=+Inf": 0.0}, 0.5) is None


def test_config_refuses_unknown_modes_and_open_loop_workers(tmp_path) -> None:
    from perfkit.config import ConfigError, parse

    with pytest.raises(ConfigError, match="load.mode.*'closed' or 'open'"):
        parse({"load": {"mode": "burst"}}, root=tmp_path, stage="baseline")
    with pytest.raises(ConfigError, match="workers to 0"):
        parse({"load": {"mode": "open", "workers": 2}}, root=tmp_path, stage="baseline")
    with pytest.raises(ConfigError, match="batching.schedulers"):
        parse({"batching": {"schedulers": ["sequential", "greedy"]}}, root=tmp_path, stage="batching")
    with pytest.raises(ConfigError, match="distinct positive"):
        parse({"batching": {"max_batch_sizes": [4, 4]}}, root=tmp_path, stage="batching")
    cfg = parse({"load": {"users": 3}}, root=tmp_path, stage="batching")
    assert cfg.load.users == 3 and cfg.batching.max_batch_sizes == (4, 8)


def test_a_closed_loop_whose_warmup_overlaps_the_measured_requests_is_flagged() -> None:
    # 4 users, 8 slots: every request runs at once and ends together, so the last warm-up answer (9.9 s) opens a
    # window of 0.1 s in which the measured rows' last tokens land: a rate of a few hundred tokens/s, not a steady state.
    warmup = [_ok(i, 0.0, 9.9, ttft=1.0, tokens=32, warmup=True) for i in range(2)]
    measured = [_ok(2 + i, 0.0, 10.0, ttft=1.0, tokens=32) for i in range(2)]
    overlapped = summarize(warmup + measured, mode="closed", users=4)
    assert overlapped.window_s == pytest.approx(0.1) and any("warm-up answers overlapped" in f for f in overlapped.flags)
    steady = summarize([_ok(0, 0.0, 1.0, warmup=True)] + [_ok(i, float(i), 1.0) for i in range(1, 5)], mode="closed", users=1)
    assert not any("warm-up" in f for f in steady.flags)
