"""Kubernetes' HorizontalPodAutoscaler, simulated: a fixed fleet against an HPA over a day of traffic.

A discrete-event simulation, per request. Arrivals are Poisson with a rate that follows a diurnal
trace (hourly levels, linearly interpolated, given as multiples of one replica's capacity so the
trace means the same on any machine). Each request goes to the ready pod that frees first (a
load balancer with a shared queue) and takes one service time, 1 / the per-replica capacity
measured by the baseline stage. The HPA runs Kubernetes' algorithm with its defaults:

- every `sync_s` (15 s) it reads each metric averaged over the ready pods: CPU utilization (the
  share of the last sync period the pods were busy) and the queue depth per pod;
- per metric, desired = ceil(current replicas x metric / target), unless the ratio is within the
  tolerance (0.1) of 1; a scale-up counts pods still starting as idle (Kubernetes treats not-yet
  ready pods as using nothing when it scales up), so a slow start does not double-count;
- the largest desired count across metrics wins; scale-up is limited to max(4 pods, 100%) per
  period (the default scale-up policy), scale-down takes the highest recommendation of the last
  `scale_down_window_s` (300 s), and the count stays within [min, max] replicas;
- a new pod takes traffic after `cold_start_s` (the measured cold start); a removed pod takes no
  new request and is paid for until its last one ends.

Utilization = busy pod-seconds / paid pod-seconds (pods starting are paid and idle). An HPA
converges on its target by construction, so the target and the trace are fixed in params before
anything is judged; the result is a simulation of this server's measured capacity and start
time, not a measurement of a cluster.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class HpaPolicy:
    target_cpu: float = 0.85  # averageUtilization / 100
    target_queue_per_pod: float | None = 4.0  # Pods metric target (None: CPU only)
    min_replicas: int = 1
    max_replicas: int = 12
    tolerance: float = 0.1
    sync_s: float = 15.0
    scale_down_window_s: float = 300.0
    scale_up_pods: int = 4  # default scale-up policy: the larger of +4 pods and +100% per period
    scale_up_pct: float = 100.0


@dataclass(frozen=True)
class Trace:
    hourly_load: tuple[float, ...]  # arrival rate at each hour, in replicas' worth of capacity
    day_s: float = 86_400.0  # the trace is spread over this many seconds (shorter for a smoke run)

    def load_at(self, t: float) -> float:
        hours = len(self.hourly_load)
        x = (t / self.day_s) * hours
        i = int(x) % hours
        frac = x - int(x)
        return self.hourly_load[i] * (1 - frac) + self.hourly_load[(i + 1) % hours] * frac


@dataclass
class _Pod:
    created: float  # paid from here
    ready_at: float
    free_at: float = 0.0
    removed_at: float = 0.0


@dataclass(frozen=True)
class SimResult:
    name: str
    utilization: float  # busy / paid pod-seconds
    latency_s_p50: float
    latency_s_p99: float
    wait_s_p99: float
    requests: int
    pod_hours: float
    max_replicas: int
    timeline: tuple[tuple[float, int, float, float], ...] = field(repr=False)  # (t, replicas, cpu, load in replicas)

    def as_metrics(self) -> dict[str, float]:
        p = self.name
        return {
            f"{p}_utilization_pct": 100 * self.utilization,
            f"{p}_latency_s_p50": self.latency_s_p50,
            f"{p}_latency_s_p99": self.latency_s_p99,
            f"{p}_wait_s_p99": self.wait_s_p99,
            f"{p}_pod_hours": self.pod_hours,
            f"{p}_max_replicas": float(self.max_replicas),
            f"{p}_requests": float(self.requests),
        }


def desired_replicas(current: int, ready: int, cpu: float, queue_per_pod: float, policy: HpaPolicy) -> int:
    """One HPA decision before stabilization and limits: the largest count any metric asks for.

    `cpu` and `queue_per_pod` are averages over the `ready` pods; pods not ready yet count as idle
    when the result would scale up.
    """
    wants = []
    metrics = [(cpu, policy.target_cpu)]
    if policy.target_queue_per_pod is not None:
        metrics.append((queue_per_pod, policy.target_queue_per_pod))
    for value, target in metrics:
        ratio = value / target
        if abs(ratio - 1) <= policy.tolerance:
            wants.append(current)
            continue
        if ratio > 1 and ready < current:  # starting pods count as using nothing
            ratio = value * ready / current / target
            if ratio <= 1 + policy.tolerance:
                wants.append(current)
                continue
        wants.append(math.ceil(current * ratio))
    return max(wants)


def simulate(
    trace: Trace,
    capacity_rps: float,
    cold_start_s: float,
    *,
    policy: HpaPolicy | None = None,
    fixed_replicas: int | None = None,
    seed: int = 0,
) -> SimResult:
    """Run the day with an HPA (`policy`) or a fixed fleet (`fixed_replicas`); exactly one of the two."""
    if (policy is None) == (fixed_replicas is None):
        raise ValueError("give either an HPA policy or a fixed replica count")
    rng = random.Random(seed)
    service_s = 1.0 / capacity_rps
    sync_s = policy.sync_s if policy else 15.0
    start = fixed_replicas if fixed_replicas is not None else policy.min_replicas  # type: ignore[union-attr]
    pods = [_Pod(created=0.0, ready_at=0.0) for _ in range(start)]
    retired: list[_Pod] = []
    busy = np.zeros(int(math.ceil(trace.day_s)) + 1)
    starts: list[float] = []  # heap: start times of requests not yet started, for the queue-depth metric
    latencies: list[float] = []
    waits: list[float] = []
    history: deque[tuple[float, int]] = deque()  # (time, recommendation) within the scale-down window
    timeline: list[tuple[float, int, float, float]] = []
    peak_rate = max(trace.hourly_load) * capacity_rps
    next_sync = sync_s
    t = 0.0

    def add_busy(a: float, b: float) -> None:
        while a < b and int(a) < len(busy):
            edge = min(b, math.floor(a) + 1.0)
            busy[int(a)] += edge - a
            a = edge

    def sync(now: float) -> None:
        nonlocal pods
        ready = [p for p in pods if p.ready_at <= now]
        lo = max(0, int(now - sync_s))
        cpu = float(busy[lo : int(now)].sum()) / max(1e-9, len(ready) * (int(now) - lo)) if ready else 0.0
        while starts and starts[0] <= now:
            heapq.heappop(starts)
        queue = len(starts) / max(1, len(ready))
        timeline.append((now, len(pods), min(cpu, 1.0), trace.load_at(now)))
        if policy is None:
            return
        want = desired_replicas(len(pods), len(ready), min(cpu, 1.0), queue, policy)
        history.append((now, want))
        while history and history[0][0] < now - policy.scale_down_window_s:
            history.popleft()
        current = len(pods)
        if want > current:
            target = min(want, max(current + policy.scale_up_pods, math.ceil(current * (1 + policy.scale_up_pct / 100))))
        else:
            target = max(r for _, r in history)  # stabilization: the highest recommendation of the window
            target = min(target, current)
        target = max(policy.min_replicas, min(policy.max_replicas, target))
        if target > current:
            pods += [_Pod(now, ready_at=now + cold_start_s, free_at=now + cold_start_s) for _ in range(target - current)]
        elif target < current:
            pods.sort(key=lambda p: (p.ready_at > now, p.free_at))  # starting pods go first, then the busiest
            for p in pods[target:]:
                p.removed_at = now
                retired.append(p)
            pods = pods[:target]

    while True:
        t += rng.expovariate(peak_rate)  # thinning: candidate arrivals at the peak rate
        while next_sync <= min(t, trace.day_s):
            sync(next_sync)
            next_sync += sync_s
        if t >= trace.day_s:
            break
        if rng.random() * peak_rate > trace.load_at(t) * capacity_rps:
            continue
        ready = [p for p in pods if p.ready_at <= t] or [min(pods, key=lambda p: p.ready_at)]
        pod = min(ready, key=lambda p: max(p.free_at, p.ready_at))
        begin = max(t, pod.free_at, pod.ready_at)
        pod.free_at = begin + service_s
        add_busy(begin, pod.free_at)
        if begin > t:
            heapq.heappush(starts, begin)
        waits.append(begin - t)
        latencies.append(pod.free_at - t)
    end = trace.day_s
    paid = sum(end - p.created for p in pods) + sum(max(p.removed_at, p.free_at) - p.created for p in retired)
    lat = np.array(latencies) if latencies else np.zeros(1)
    name = "hpa" if policy else "fixed"
    return SimResult(
        name=name,
        utilization=float(busy[: int(end)].sum()) / paid,
        latency_s_p50=float(np.percentile(lat, 50)),
        latency_s_p99=float(np.percentile(lat, 99)),
        wait_s_p99=float(np.percentile(np.array(waits or [0.0]), 99)),
        requests=len(latencies),
        pod_hours=paid / 3600,
        max_replicas=max(n for _, n, _, _ in timeline) if timeline else start,
        timeline=tuple(timeline),
    )


def fixed_fleet_for(trace: Trace, peak_utilization: float) -> int:
    """Replicas a static deployment provisions: the trace's peak at `peak_utilization` per replica."""
    return max(1, math.ceil(max(trace.hourly_load) / peak_utilization))


def compare(
    trace: Trace, capacity_rps: float, cold_start_s: float, policy: HpaPolicy, fixed_replicas: int, seed: int = 0
) -> tuple[SimResult, SimResult]:
    """(fixed fleet, HPA) on the same arrivals (same seed)."""
    return (
        simulate(trace, capacity_rps, cold_start_s, fixed_replicas=fixed_replicas, seed=seed),
        simulate(trace, capacity_rps, cold_start_s, policy=policy, seed=seed),
    )
