"""Between-round spread: t intervals, paired ratios, interleaving, noise flags (issue 9)."""

import statistics

import numpy as np
import pytest

from perfkit.measure import Latency, Spread, interleaved, ratio, timed_rounds
from perfkit.stats import mean_ci, t95


def test_t_interval_over_three_rounds_matches_the_formula():
    values = [10.0, 12.0, 14.0]
    low, high = mean_ci(values)
    half = 4.303 * statistics.stdev(values) / 3**0.5  # t(0.975, df=2)
    assert (low, high) == pytest.approx((12 - half, 12 + half))
    assert low < 10 and high > 14  # wider than the range: three rounds say little


def test_one_round_has_no_interval_and_a_constant_has_a_zero_width_one():
    assert mean_ci([5.0]) is None
    assert mean_ci([5.0, 5.0, 5.0]) == pytest.approx((5.0, 5.0))
    with pytest.raises(ValueError):
        t95(0)


def test_bootstrap_only_from_twenty_samples():
    rng = np.random.default_rng(1)
    values = list(rng.normal(100, 5, 40))
    low, high = mean_ci(values)
    t_half = t95(39) * statistics.stdev(values) / 40**0.5
    assert low < statistics.fmean(values) < high
    assert (high - low) == pytest.approx(2 * t_half, rel=0.3)  # bootstrap of the mean, not the median or the data
    assert (high - low) < 0.5 * (max(values) - min(values))


def test_paired_ratio_cancels_drift_between_rounds():
    # Both variants drift by the same factor each round: the ratio is exactly 2 and its interval has no width.
    a = Spread((20.0, 30.0, 40.0))
    b = Spread((10.0, 15.0, 20.0))
    r = ratio(a, b)
    assert r.values == (2.0, 2.0, 2.0) and r.ci == pytest.approx((2.0, 2.0))
    # The ratio of the means' intervals would be wide; the paired one is not.
    assert a.ci[0] / b.ci[1] < 1.5
    with pytest.raises(ValueError):
        ratio(a, Spread((1.0, 2.0)))


def test_summary_keys_are_what_claims_read():
    s = Spread((1.0, 2.0, 3.0))
    out = s.summary("speedup")
    assert set(out) == {"speedup", "speedup_ci_low", "speedup_ci_high"}
    assert out["speedup_ci_low"] < out["speedup"] == 2.0 < out["speedup_ci_high"]
    assert set(Spread((1.0,)).summary("x")) == {"x"}


def test_noise_flags():
    quiet = Spread((100.0, 101.0, 99.0), cv_within=0.01, samples=15)
    assert quiet.flags(noisy_cv=0.05, min_repeats=5) == ()
    noisy_between = Spread((100.0, 130.0, 80.0), cv_within=0.01, samples=15)
    assert any(f.startswith("noisy") for f in noisy_between.flags(0.05, 5))
    noisy_within = Spread((100.0, 100.0, 100.0), cv_within=0.2, samples=15)
    assert any(f.startswith("noisy") for f in noisy_within.flags(0.05, 5))
    few = Spread((100.0, 100.0), samples=4)
    assert any(f.startswith("few samples") for f in few.flags(0.05, 5))
    cols = noisy_between.columns("tok_s", 0.05, 5)
    assert cols["tok_s_rounds"] == 3 and cols["tok_s_samples"] == 15 and "noisy" in cols["tok_s_flags"]


def test_interleaved_runs_round_robin():
    order = []
    out = interleaved({name: (lambda r, name=name: order.append((r, name)) or name + str(r)) for name in "ABC"}, 3)
    assert order == [(r, n) for r in range(3) for n in "ABC"]
    assert out == {"A": ["A0", "A1", "A2"], "B": ["B0", "B1", "B2"], "C": ["C0", "C1", "C2"]}
    with pytest.raises(ValueError):
        interleaved({"A": lambda r: r}, 0)


def test_timed_rounds_warm_each_round_and_count_samples():
    calls = {"A": 0, "B": 0}

    def make(name):
        def fn():
            calls[name] += 1

        return fn

    spreads = timed_rounds({"A": make("A"), "B": make("B")}, 3, warmup=2, min_repeats=4)
    assert calls == {"A": 3 * (2 + 4), "B": 3 * (2 + 4)}  # a warm-up in every round, not once
    assert spreads["A"].n == 3 and spreads["A"].samples == 12


def test_p99_from_fewer_than_299_samples_is_not_reported():
    few = Latency.from_samples([0.01 * i for i in range(1, 31)]).as_metrics("latency")
    assert "latency_ms_p99" not in few and few["latency_ms_p95"] > 0
    many = Latency.from_samples([0.01 * i for i in range(1, 300)]).as_metrics("latency")
    assert "latency_ms_p99" in many


def test_at_least_decides_only_when_the_interval_clears():
    from perfkit.measure import noise_sentence

    assert Spread((3.3, 3.4, 3.5)).at_least(3.0) is True
    assert Spread((3.1, 3.2, 3.3)).at_least(3.0) is None  # every round above 3, but three rounds cannot say so
    assert Spread((2.1, 2.2, 2.3)).at_least(3.0) is False
    assert Spread((2.5, 3.5, 3.0)).at_least(3.0) is None  # straddles
    assert Spread((3.5,)).at_least(3.0) is True
    assert noise_sentence({"a": Spread((1.0, 1.0), samples=10)}, 0.05, 5) == ""
    assert "b" in noise_sentence({"a": Spread((1.0, 1.0), samples=10), "b": Spread((1.0, 2.0), samples=10)}, 0.05, 5)


def test_a_figure_and_its_interval_are_written_one_way():
    from perfkit.measure import interval_text, summary_text

    assert interval_text(2.734, 1.53, 3.94, ".2f", "x") == "2.73x (95% CI 1.53–3.94x)"
    assert interval_text(12.0, -3.0, 27.0, "+.0f", "%") == "+12% (95% CI -3% to +27%)"  # signed: "to", not a dash
    assert interval_text(0.5, None, None, ".1f", " s", alone=" (one round)") == "0.5 s (one round)"
    summary = {"gain": 4.74, "gain_ci_low": 2.02, "gain_ci_high": 5.46, "flat": 1.0}
    assert summary_text(summary, "gain", unit="x") == "4.74x (95% CI 2.02–5.46x)" and summary_text(summary, "flat") == "1.00"
    assert Spread((1.0, 1.0)).text(unit="x") == "1.00x (95% CI 1.00–1.00x)" and Spread((2.0,)).text(alone="!") == "2.00!"
