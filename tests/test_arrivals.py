"""The open loop's arrival times: Poisson gaps, conditioned on the count so that a point offers its rate."""

from __future__ import annotations

import random
import statistics

import pytest

from perfkit.load.arrivals import poisson_arrivals


def test_the_last_arrival_falls_at_count_over_rate_and_times_increase():
    times = poisson_arrivals(random.Random(7), 2.0, 30)
    assert len(times) == 30 and times[-1] == pytest.approx(15.0)
    assert all(a < b for a, b in zip(times, times[1:])) and times[0] > 0
    assert poisson_arrivals(random.Random(7), 2.0, 0) == []


def test_the_same_seed_gives_the_same_schedule_scaled_by_the_rate():
    slow, fast = poisson_arrivals(random.Random(3), 0.5, 40), poisson_arrivals(random.Random(3), 4.0, 40)
    assert [t / 8 for t in slow] == pytest.approx(fast)


def test_the_gaps_stay_as_bursty_as_a_poisson_process():
    # Exponential gaps have a coefficient of variation of 1; evenly spaced arrivals would have 0.
    gaps = []
    for seed in range(50):
        times = poisson_arrivals(random.Random(seed), 1.0, 30)
        gaps += [b - a for a, b in zip([0.0, *times], times)]
    assert 0.85 < statistics.stdev(gaps) / statistics.fmean(gaps) < 1.15


def test_blocks_put_every_blocks_last_arrival_at_its_nominal_time_and_stay_bursty():
    times = poisson_arrivals(random.Random(5), 2.0, 30, block=4)
    assert len(times) == 30 and all(a < b for a, b in zip(times, times[1:]))
    assert [times[i] for i in (3, 7, 11, 27, 29)] == pytest.approx([2.0, 4.0, 6.0, 14.0, 15.0])  # 4, 8, ... at 2/s
    assert times != pytest.approx(poisson_arrivals(random.Random(5), 2.0, 30))  # not the one-block schedule
    gaps = [b - a for a, b in zip([0.0, *times], times)]
    assert statistics.stdev(gaps) / statistics.fmean(gaps) > 0.5  # still far from evenly spaced (0)
