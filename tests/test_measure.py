import numpy as np
import pytest

from perfkit.measure import Latency, littles_law_max_qps, repeat
from perfkit.stats import bootstrap_ci, cv


def test_latency_percentiles_in_ms():
    lat = Latency.from_samples([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert lat.count == 100
    assert lat.p50 == pytest.approx(50.5)
    assert lat.min == pytest.approx(1) and lat.max == pytest.approx(100)
    assert lat.p99 == pytest.approx(np.percentile(np.arange(1, 101), 99))
    m = lat.as_metrics("ttft")
    assert m["ttft_ms_p50"] == lat.p50 and m["ttft_count"] == 100 and "ttft_cv" in m
    assert not lat.p99_reliable and Latency.from_samples([0.1] * 299).p99_reliable  # 299 samples bound a p99


def test_latency_needs_samples():
    with pytest.raises(ValueError):
        Latency.from_samples([])


def test_repeat_meets_the_minimum_count_after_warmup():
    calls = []
    r = repeat(lambda: calls.append(1), warmup=3, min_repeats=5)
    assert len(calls) == 8 and len(r.seconds) == 5 and not r.capped


def test_repeat_stops_at_the_cap_and_says_so():
    r = repeat(lambda: None, warmup=0, min_repeats=10**9, max_duration_s=0.05)
    assert r.capped and len(r.seconds) >= 1


def test_cv_and_bootstrap():
    assert cv([1.0]) == 0.0
    assert cv([1.0, 1.0, 1.0]) == 0.0
    lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 1.0 <= lo <= 3.0 <= hi <= 5.0


def test_littles_law_bound():
    # The seed's C10 + C11: 10 users at 0.7 s mean latency cannot exceed ~14.3 QPS.
    assert littles_law_max_qps(10, 0.7) == pytest.approx(14.2857, rel=1e-3)


def test_paired_bootstrap_keeps_items_together_and_brackets_the_value():
    from perfkit.stats import bootstrap_paired

    rng = np.random.default_rng(0)
    teacher = (rng.random(2000) < 0.3).astype(float)
    student = teacher.copy()  # the same answers on the same items: any paired resample gives ratio 1
    value, low, high = bootstrap_paired([student, teacher], lambda s, t: s.mean(1) / t.mean(1), n=300)
    assert value == low == high == 1.0
    student[:300] = 0.0
    value, low, high = bootstrap_paired([student, teacher], lambda s, t: s.mean(1) / t.mean(1), n=300)
    assert low < value < high < 1.0


def test_t_interval_widens_with_spread_and_needs_two_rounds():
    import math

    from perfkit.stats import t_interval

    mean, low, high = t_interval([2.0])
    assert mean == 2.0 and math.isnan(low) and math.isnan(high)
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and low < 2.0 < high and high - low == pytest.approx(2 * 4.303 * 1.0 / 3**0.5)


def test_warm_up_runs_the_count_and_then_until_the_time_has_passed(monkeypatch):
    import perfkit.measure as measure

    clock = [0.0]
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock[0])

    def call() -> None:
        clock[0] += 0.5  # each call takes half a (fake) second

    assert measure.warm_up(call, count=2, seconds=0.0) == 2
    assert measure.warm_up(call, count=2, seconds=3.0) == 6  # 3 s at 0.5 s a call: the time, not the count, ends it
    assert measure.warm_up(call, count=0, seconds=0.0) == 0
    r = repeat(call, warmup=1, min_repeats=2, warmup_s=2.0)
    assert r.warmup == 4 and len(r.seconds) == 2
