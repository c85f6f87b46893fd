"""Run the operations experiments: one batched server for the capacity, jobs and neighbours, one for the alerts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from perfkit.config import Config
from perfkit.load.runner import served_prompts
from perfkit.serving.launch import LaunchError, ServerHandle, launch
from perfkit.stages.operations import OperationsConfig
from perfkit.stages.operations.alerts import AlertRun, alert_queue_wait_s, run_alerts
from perfkit.stages.operations.autoscale import Autoscaling, run_autoscaling
from perfkit.stages.operations.common import Percentiles, measure_capacity, server_overrides
from perfkit.stages.operations.longjobs import JobVariant, run_jobs
from perfkit.stages.operations.neighbours import NeighbourRun, run_neighbours

if TYPE_CHECKING:
    from perfkit.stages.operations.result import OperationsResult


@dataclass
class Parts:
    capacity: float | None = None
    alerts: AlertRun | None = None
    jobs: list[JobVariant] = field(default_factory=list)
    submit_probe: Percentiles | None = None
    neighbours: list[NeighbourRun] = field(default_factory=list)
    autoscaling: Autoscaling | None = None
    load_avg: tuple[float, float] = (0.0, 0.0)
    isolated_failure: str | None = None  # why the isolated variant's server did not start


@contextmanager
def isolated_server(cfg: Config, ops: OperationsConfig, threads: int, failures: list[str]) -> Iterator[ServerHandle | None]:
    """The isolated jobs variant's server with `threads` torch threads, or None where it did not start (why appended
    to `failures`): the other variants stand without it."""
    with ExitStack() as stack:
        try:
            handle = stack.enter_context(
                launch(cfg, overrides=server_overrides(ops, **{"hardware.threads": threads}), probe_cold_start=False)
            )
        except LaunchError as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or ["no message"]
            failures.append(lines[0].rstrip(":") + (f"; its log ends: {lines[-1][:200]}" if len(lines) > 1 else ""))
            handle = None
        yield handle


def run_parts(cfg: Config, ops: OperationsConfig, folder: Path) -> Parts:
    """The parts `ops.parts` names; jobs and neighbours share the server whose capacity is measured first."""
    failures: list[str] = []

    load_start = os.getloadavg()[0]
    capacity = alerts = autoscaling = probe = None
    jobs: list[JobVariant] = []
    neighbours: list[NeighbourRun] = []
    live = {"alerts", "jobs", "neighbours"} & set(ops.parts)
    if live:
        prompts = served_prompts(cfg)
        with launch(cfg, overrides=server_overrides(ops), probe_cold_start=False) as server:
            capacity = measure_capacity(cfg, ops, server, prompts, folder / "capacity")
            if "jobs" in ops.parts:
                jobs, probe = run_jobs(
                    cfg, ops, server, prompts, folder / "jobs", capacity, partial(isolated_server, cfg, ops, failures=failures)
                )
            if "neighbours" in ops.parts:
                neighbours = run_neighbours(cfg, ops, server, prompts, folder / "neighbours", capacity)
        if "alerts" in ops.parts:
            # Its own server: the queue bound that lets the queue pass the alert's threshold depends on the capacity
            # just measured, and a longer bound would change what the jobs and the neighbours wait for.
            wait = alert_queue_wait_s(ops, capacity, cfg.serving.max_queue_wait_s)
            with launch(cfg, overrides=server_overrides(ops, **{"serving.max_queue_wait_s": wait}), probe_cold_start=False) as server:
                alerts = run_alerts(cfg, ops, server, prompts, folder / "alerts", capacity, wait)
    if "autoscaling" in ops.parts:
        autoscaling = run_autoscaling(ops, cfg.experiments_dir / "baseline" / "metrics.json")
    load_avg = (load_start, os.getloadavg()[0])
    return Parts(capacity, alerts, jobs, probe, neighbours, autoscaling, load_avg, failures[0] if failures else None)


def run(cfg: Config) -> OperationsResult:
    """Every part `operations.parts` names; each variant logged as a nested MLflow run."""
    from tempfile import TemporaryDirectory

    from perfkit import tracking
    from perfkit.stages.operations import STAGE
    from perfkit.stages.operations.result import OperationsResult

    ops: OperationsConfig = cfg.section(STAGE.name)
    with TemporaryDirectory(prefix="perfkit-operations-") as folder:
        parts = run_parts(cfg, ops, Path(folder))
    result = OperationsResult(
        parts.capacity,
        parts.alerts,
        tuple(parts.jobs),
        tuple(parts.neighbours),
        parts.autoscaling,
        parts.load_avg,
        ops.submit_slo_ms,
        ops.fair_share_tolerance,
        ops.keepup_unserved_share,
        ops.cpu_full_share,
        parts.submit_probe,
        parts.isolated_failure,
    )
    jobs, neighbours, autoscaling, alerts = parts.jobs, parts.neighbours, parts.autoscaling, parts.alerts
    for j in jobs:
        tracking.log_variant(f"jobs-{j.variant}", _numbers(j.row()))
    for n in neighbours:
        tracking.log_variant(f"neighbours-{n.variant}", _numbers(n.row()), {"fair_queueing": n.queueing, "bucket": n.bucket})
    if autoscaling is not None:
        for sim in (autoscaling.fixed, autoscaling.hpa):
            tracking.log_variant(f"autoscaling-{sim.name}", sim.as_metrics())
    if alerts is not None and alerts.status == "ok":
        tracking.log_variant("alerts", {k: v for k, v in result.summary().items() if "alert" in k and isinstance(v, (int, float))})
    return result


def _numbers(row: dict[str, object]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
