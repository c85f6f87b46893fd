"""C18 live: the alert rules in a real Prometheus scraping the server every second, through three phases.

1. normal: a few closed-loop users, well under capacity: no alert may fire;
2. overload: open-loop arrivals at `overload_factor` x the measured capacity: once the queue bound
   is reached (after about max_queue_wait_s / (factor - 1) seconds) admission answers most with 503
   (and 429 past a key's bucket), so the error-rate alert must fire, within three
   scrape intervals plus the rule's `for:`; the queue alert can fire only if the queue bound lets
   more than `queue_alert` requests wait, about max_queue_wait_s x capacity (Little's law), so the
   alerts get a server of their own whose bound is set from the measured capacity
   (`alert_queue_headroom`); the computed cap is reported, and where it is under the threshold
   the alert cannot fire;
3. after: no load until every alert has resolved (or `resolve_cap_s`).
The firing intervals come from /api/v1/alerts polled every 0.5 s; the plotted series are
Prometheus' own, read back with query_range.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfkit.config import Config
from perfkit.load.runner import run_load
from perfkit.monitoring import rules
from perfkit.monitoring.prometheus import AlertWatcher, availability, prometheus
from perfkit.serving.launch import ServerHandle
from perfkit.stages.operations import OperationsConfig

SCRAPE_S = 1.0


def plotted(t: rules.Thresholds) -> dict[str, str]:
    """The series the timeline shows: the queue and the error ratio, as the rules compute them."""
    return {"queue depth": "max(perfkit_queue_depth)", "error ratio": rules.expressions(t)[rules.ERROR_ALERT].rsplit(" > ", 1)[0]}


@dataclass(frozen=True)
class AlertRun:
    status: str  # "ok" | "skipped"
    reason: str = ""
    capacity_rps: float = float("nan")
    max_queue_wait_s: float = float("nan")  # the alerts server's queue bound
    queue_cap: float = float("nan")  # requests the queue bound lets wait: max_queue_wait_s x capacity
    max_queue_depth: float = float("nan")
    bound_s: float = float("nan")  # 3 scrapes + for:
    phases: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # normal start, overload start, end, after end
    firing: dict[str, list[tuple[float, float | None]]] = field(default_factory=dict)  # relative to normal start
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    thresholds: rules.Thresholds = rules.Thresholds()
    gpu_exported: bool = False  # the server exported the device-memory gauges (a GPU was present)
    first_error_s: float | None = None  # the first 5xx/429 answer of the overload, relative to the normal start

    def fire_delay_s(self, alert: str) -> float | None:
        """Seconds from the overload's start to the first firing of `alert` after it."""
        starts = [a for a, _ in self.firing.get(alert, []) if a >= self.phases[1] - self.phases[0]]
        return starts[0] - (self.phases[1] - self.phases[0]) if starts else None

    def fire_after_errors_s(self, alert: str) -> float | None:
        """Seconds from the overload's first refused answer to the alert firing: what 3 scrapes + for: bounds."""
        fire = self.fire_delay_s(alert)
        if fire is None or self.first_error_s is None:
            return None
        return fire + (self.phases[1] - self.phases[0]) - self.first_error_s

    def resolve_delay_s(self, alert: str) -> float | None:
        """Seconds from the overload's end to the alert's last resolution (None: fired and never resolved)."""
        spans = self.firing.get(alert, [])
        if not spans or spans[-1][1] is None:
            return None
        return spans[-1][1] - (self.phases[2] - self.phases[0])

    @property
    def false_alerts(self) -> int:
        """Alerts that fired during the normal phase."""
        normal_end = self.phases[1] - self.phases[0]
        return sum(1 for spans in self.firing.values() for a, _ in spans if a < normal_end)

    @property
    def queue_alert_possible(self) -> bool:
        return self.queue_cap > self.thresholds.queue_depth


def thresholds(ops: OperationsConfig) -> rules.Thresholds:
    return rules.Thresholds(
        queue_depth=ops.queue_alert,
        error_ratio=ops.error_ratio_alert,
        latency_p99_slo_s=ops.latency_slo_s,
        memory_ratio=ops.memory_alert,
        window_s=ops.alert_window_s,
        for_s=ops.alert_for_s,
    )


def alert_queue_wait_s(ops: OperationsConfig, capacity: float, configured_s: float) -> float:
    """The alerts server's `max_queue_wait_s`: long enough for `alert_queue_headroom` x the threshold to wait.

    By Little's law the bound lets about max_queue_wait_s x capacity requests wait; at the default 30 s
    that is 52 at 1.75 requests/s, too close to the threshold of 50 for the alert to fire (the queue
    peaked at 48 when tried). Headroom 0 keeps `configured_s` (serving.max_queue_wait_s).
    """
    if not ops.alert_queue_headroom:
        return configured_s
    return min(3600.0, ops.alert_queue_headroom * ops.queue_alert / capacity)


def run_alerts(
    cfg: Config, ops: OperationsConfig, server: ServerHandle, prompts: list[Any], folder: Path, capacity: float, max_queue_wait_s: float
) -> AlertRun:
    """The three phases against `server` (queue bound `max_queue_wait_s`), with Prometheus scraping it."""
    reason = availability()
    if reason:
        return AlertRun("skipped", reason)
    t = thresholds(ops)
    target = f"{server.host}:{server.port}"
    with (
        prometheus([target], rules.render(t), folder / "prometheus", scrape_interval_s=SCRAPE_S) as prom,
        AlertWatcher(prom, interval_s=0.5) as watcher,
    ):
        t0 = time.time()
        run_load(
            cfg,
            server,
            prompts,
            folder / "normal",
            mode="closed",
            users=ops.normal_users,
            requests=10**6,
            warmup_requests=0,
            duration_s=ops.normal_s,
        )
        rate = ops.overload_factor * capacity
        flood = run_load(
            cfg,
            server,
            prompts,
            folder / "overload",
            mode="open",
            rate_rps=rate,
            users=ops.capacity_users * 4,
            requests=math.ceil(rate * ops.overload_s),
            warmup_requests=0,
            duration_s=ops.overload_s,
            key_prefix="perfkit-flood",
        )
        # The overload runs from its first request to its last answer (Locust takes seconds to start and stop).
        t1 = min(r.t_send for r in flood.timings)
        t2 = max(r.t_send + r.e2e_s for r in flood.timings)
        refused = [r.t_send + r.e2e_s for r in flood.timings if r.status >= 500 or r.status == 429]
        # After: the errors stay in the rate window for window_s, then for: and a few scrapes may pass before an
        # alert that was still pending fires; only then does "nothing pending or firing" mean resolved.
        settle = t2 + t.window_s + t.for_s + 3 * SCRAPE_S
        while time.time() < t2 + ops.resolve_cap_s and (time.time() < settle or watcher.active()):
            time.sleep(0.5)
        time.sleep(1.0)
        t3 = time.time()
        series = {name: [(x - t0, v) for x, v in prom.query_range(expr, t0, t3)] for name, expr in plotted(t).items()}
        gpu = bool(prom.query("perfkit_gpu_memory_total_bytes"))
    firing = {a: [(s - t0, None if e is None else e - t0) for s, e in watcher.intervals(a)] for a in rules.ALERTS}
    depth = [v for _, v in series.get("queue depth", [])]
    return AlertRun(
        "ok",
        capacity_rps=capacity,
        max_queue_wait_s=max_queue_wait_s,
        queue_cap=max_queue_wait_s * capacity,
        max_queue_depth=max(depth, default=float("nan")),
        bound_s=3 * SCRAPE_S + t.for_s,
        phases=(t0, t1, t2, t3),
        firing=firing,
        series=series,
        thresholds=t,
        gpu_exported=gpu,
        first_error_s=min(refused) - t0 if refused else None,
    )
