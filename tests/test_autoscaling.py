"""The HPA simulation: Kubernetes' decision rule, and a fleet that follows the load."""

from __future__ import annotations

import pytest

from perfkit.autoscaling import HpaPolicy, Trace, compare, desired_replicas, fixed_fleet_for, simulate

POLICY = HpaPolicy(target_cpu=0.8, target_queue_per_pod=None)


def test_within_the_tolerance_the_hpa_keeps_its_count():
    assert desired_replicas(4, 4, cpu=0.85, queue_per_pod=0, policy=POLICY) == 4  # ratio 1.06
    assert desired_replicas(4, 4, cpu=0.75, queue_per_pod=0, policy=POLICY) == 4  # ratio 0.94


def test_outside_it_desired_is_ceil_current_times_ratio():
    assert desired_replicas(4, 4, cpu=1.0, queue_per_pod=0, policy=POLICY) == 5  # ceil(4 x 1.25)
    assert desired_replicas(4, 4, cpu=0.2, queue_per_pod=0, policy=POLICY) == 1


def test_the_largest_count_across_metrics_wins():
    both = HpaPolicy(target_cpu=0.8, target_queue_per_pod=2.0)
    assert desired_replicas(4, 4, cpu=0.4, queue_per_pod=6.0, policy=both) == 12  # queue asks 3x, CPU half
    assert desired_replicas(4, 4, cpu=1.0, queue_per_pod=0.0, policy=both) == 5


def test_starting_pods_count_as_idle_when_scaling_up():
    # 2 of 4 pods ready at 100%: as if 4 at 50%, below the target: no further scale-up
    assert desired_replicas(4, 2, cpu=1.0, queue_per_pod=0, policy=POLICY) == 4


def test_a_flat_load_keeps_an_hpa_fleet_near_its_target_and_serves_every_request():
    trace = Trace((3.0,) * 24, day_s=3600)
    hpa = simulate(trace, capacity_rps=2.0, cold_start_s=5.0, policy=HpaPolicy(target_cpu=0.75, target_queue_per_pod=None))
    # 3 replicas' worth at 75%: 4 pods, or 5 where one noisy 15 s sample of the last 300 s asked for them
    assert 4 <= hpa.timeline[-1][1] <= 5
    assert 0.45 < hpa.utilization < 0.8
    assert hpa.requests == pytest.approx(3.0 * 2.0 * 3600, rel=0.05)


def test_over_a_day_the_hpa_pays_fewer_pod_hours_than_a_fleet_sized_for_the_peak():
    trace = Trace((1, 1, 1, 1, 2, 4, 6, 6, 6, 6, 4, 2), day_s=7200)
    fixed_n = fixed_fleet_for(trace, 0.85)
    assert fixed_n == 8
    fixed, hpa = compare(trace, 2.0, 10.0, HpaPolicy(), fixed_n, seed=1)
    assert fixed.requests == hpa.requests  # the same arrivals
    assert fixed.timeline[-1][1] == fixed_n and fixed.max_replicas == fixed_n
    assert hpa.pod_hours < fixed.pod_hours and hpa.utilization > fixed.utilization
    assert min(n for _, n, _, _ in hpa.timeline) < max(n for _, n, _, _ in hpa.timeline)  # it scaled


def test_scale_down_waits_for_the_stabilization_window():
    trace = Trace((6.0,) * 12 + (0.5,) * 12, day_s=24 * 600)  # the load falls between t = 6600 and 7200 s

    def replicas(window_s: float) -> dict[float, int]:
        hpa = simulate(trace, 2.0, 5.0, policy=HpaPolicy(target_queue_per_pod=None, scale_down_window_s=window_s))
        return {t: n for t, n, _, _ in hpa.timeline}

    patient, hasty = replicas(300.0), replicas(0.0)
    assert patient[6600.0] >= hasty[6600.0] >= 7  # 6 replicas' worth at 85%
    assert patient[7200.0 + 150] > hasty[7200.0 + 150]  # still holding pods 150 s after the fall
    assert patient[9000.0] == hasty[9000.0] == 1  # both end at one pod (the trace wraps to its start in its last hour)
