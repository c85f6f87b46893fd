"""One fresh server under one closed-loop load: cold start, the load's figures and the server's resources.

The unit the optimized stage repeats in interleaved rounds (baseline, optimized, baseline, ...): a
new process per run, so every round pays and measures its own cold start (spawn -> first answer)
and its own peak RSS, and no run inherits another's caches.

A stack (the server settings a stage chose, as dotted params keys) is written into a metrics.json
summary as typed keys for readers of that file (`stack_changes`, one `stack.<dotted key>` per
setting); another stage reads it from the saved result (`perfkit.upstream.optimized_stack`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from perfkit.config import Config
from perfkit.endpoints.base import Endpoint
from perfkit.hardware import ResourceSampler, ResourceUsage
from perfkit.load.runner import LoadRun, run_load
from perfkit.serving.launch import QUEUE_ALL, launch
from perfkit.workload import Prompt

STACK_PREFIX = "stack."
# The baseline stage's deployment: one request at a time, fp32, every request queued until served.
BASELINE = {"serving.scheduler": "sequential", "serving.dtype": "float32"} | QUEUE_ALL


def stack_keys(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A stack's server settings as summary keys: `stack_changes` and `stack.<dotted key>` each."""
    return {"stack_changes": len(overrides)} | {STACK_PREFIX + key: value for key, value in overrides.items()}


@dataclass(frozen=True)
class ServedRun:
    """A server configuration's one run: its load, resources and start-up times."""

    name: str
    round: int
    load: LoadRun
    server: ResourceUsage
    cold_start_s: float | None
    load_s: float
    ready_s: float
    overrides: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        out = self.load.summary.as_metrics() | self.server.as_metrics()
        out |= {"model_load_s": self.load_s, "ready_s": self.ready_s}
        if self.cold_start_s is not None:
            out["cold_start_s"] = self.cold_start_s
        return out


def serve_under_load(
    cfg: Config,
    name: str,
    overrides: Mapping[str, Any],
    prompts: Sequence[Prompt],
    *,
    round_index: int = 0,
    requests: int | None = None,
    probe_cold_start: bool = True,
    timeout_s: float = 180.0,
    then: Callable[[Endpoint], object] | None = None,
) -> ServedRun:
    """A fresh server with `overrides` (dotted params keys) under `cfg.load`, `requests` measured requests; always stopped.

    `then(server)` runs on the same server after the load (outside the resource sampling), before it stops."""
    with (
        launch(cfg, overrides=dict(overrides), probe_cold_start=probe_cold_start, timeout_s=timeout_s) as handle,
        TemporaryDirectory() as folder,
    ):
        with ResourceSampler(handle.pid, cfg.hardware.sample_interval_s) as sampler:
            load = run_load(cfg, handle, prompts, Path(folder), requests=requests)
        if then is not None:
            then(handle)
    return ServedRun(name, round_index, load, sampler.usage, handle.cold_start_s, handle.load_s, handle.ready_s, dict(overrides))
