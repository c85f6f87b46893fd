"""Run the operations experiments: one batched server for the capacity, alerts, jobs and the FIFO neighbours."""

from __future__ import annotations

import os
from pathlib import Path

from perfkit.config import Config
from perfkit.load.runner import served_prompts
from perfkit.serving.launch import launch
from perfkit.stages.operations import OperationsConfig
from perfkit.stages.operations.alerts import AlertRun, run_alerts
from perfkit.stages.operations.autoscale import Autoscaling, run_autoscaling
from perfkit.stages.operations.common import measure_capacity, server_overrides
from perfkit.stages.operations.longjobs import JobVariant, run_jobs
from perfkit.stages.operations.neighbours import NeighbourRun, run_neighbours


def run_parts(
    cfg: Config, ops: OperationsConfig, folder: Path
) -> tuple[float | None, AlertRun | None, list[JobVariant], list[NeighbourRun], Autoscaling | None, tuple[float, float]]:
    """The parts `ops.parts` names; live ones share one server, whose capacity is measured first."""
    load_start = os.getloadavg()[0]
    capacity = alerts = autoscaling = None
    jobs: list[JobVariant] = []
    neighbours: list[NeighbourRun] = []
    live = {"alerts", "jobs", "neighbours"} & set(ops.parts)
    if live:
        prompts = served_prompts(cfg)
        with launch(cfg, overrides=server_overrides(ops), probe_cold_start=False) as server:
            capacity = measure_capacity(cfg, ops, server.base_url, prompts, folder / "capacity")
            if "alerts" in ops.parts:
                alerts = run_alerts(cfg, ops, server, prompts, folder / "alerts", capacity)
            if "jobs" in ops.parts:
                jobs = run_jobs(cfg, ops, server, prompts, folder / "jobs", capacity)
            if "neighbours" in ops.parts:
                neighbours = run_neighbours(cfg, ops, server, prompts, folder / "neighbours", capacity)
    if "autoscaling" in ops.parts:
        autoscaling = run_autoscaling(ops, cfg.root / "experiments" / "baseline" / "metrics.json")
    return capacity, alerts, jobs, neighbours, autoscaling, (load_start, os.getloadavg()[0])
