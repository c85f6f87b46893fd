"""C3 on paper: the HPA simulation (`perfkit.autoscaling`) driven by the baseline's measured capacity and cold start."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from perfkit.autoscaling import HpaPolicy, SimResult, Trace, compare, fixed_fleet_for
from perfkit.stages.operations import OperationsConfig


@dataclass(frozen=True)
class Autoscaling:
    fixed: SimResult
    hpa: SimResult
    fixed_replicas: int
    capacity_rps: float
    cold_start_s: float
    source: str  # where capacity and cold start came from

    @property
    def lift_pct_points(self) -> float:
        return 100 * (self.hpa.utilization - self.fixed.utilization)


def measured_inputs(baseline_metrics: Path, ops: OperationsConfig) -> tuple[float, float, str]:
    """Per-replica capacity (req/s) and cold start (s) from the baseline stage's metrics.json, else the params'."""
    try:
        s = json.loads(baseline_metrics.read_text())["summary"]
        return float(s["throughput_rps"]), float(s["cold_start_s"]), f"measured ({baseline_metrics.name} of the baseline stage)"
    except (OSError, KeyError, ValueError, TypeError):
        return ops.capacity_rps, ops.cold_start_s, "params (the baseline stage has not run)"


def run_autoscaling(ops: OperationsConfig, baseline_metrics: Path) -> Autoscaling:
    capacity, cold_start, source = measured_inputs(baseline_metrics, ops)
    trace = Trace(ops.hpa_trace, day_s=ops.hpa_day_s)
    policy = HpaPolicy(
        target_cpu=ops.hpa_target_cpu_pct / 100,
        target_queue_per_pod=ops.hpa_target_queue,
        min_replicas=ops.hpa_min_replicas,
        max_replicas=ops.hpa_max_replicas,
    )
    n = fixed_fleet_for(trace, ops.fixed_peak_utilization)
    fixed, hpa = compare(trace, capacity, cold_start, policy, n, seed=ops.seed)
    return Autoscaling(fixed, hpa, n, capacity, cold_start, source)
