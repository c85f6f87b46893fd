"""How a served stage opens the endpoint it loads, and watches its process where it can.

`served(cfg, overrides=...)` is perfkit's own server with the stage's settings, or, with
`load.target_url`, the user's endpoint checked by `openai.preflight` (the stage's server settings
then do not apply: the endpoint is what it is). `Watch(endpoint, interval_s)` samples the serving
process's memory and CPU while a load runs; for an endpoint perfkit did not start its `usage`
stays None, and `server_metrics` writes `NOT_AVAILABLE` for each server-side figure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from perfkit.config import Config
from perfkit.endpoints.base import NOT_AVAILABLE, Endpoint
from perfkit.hardware import ResourceSampler, ResourceUsage

if TYPE_CHECKING:
    from perfkit.serving.launch import ColdStart

# What only a process perfkit started can tell, in a variant's metrics.
SERVER_FIGURES = ("peak_rss_mb", "cpu_util_pct", "peak_cpu_util_pct")
START_FIGURES = ("cold_start_s", "ready_s", "model_load_s", "first_response_s")


@contextmanager
def served(
    cfg: Config,
    *,
    overrides: Mapping[str, Any] | None = None,
    warmup: bool | None = None,
    probe_cold_start: bool = True,
    timeout_s: float = 180.0,
) -> Iterator[Endpoint]:
    """The endpoint a served stage measures: `load.target_url` if set, else a fresh perfkit server (always stopped)."""
    if cfg.load.target_url:
        from perfkit.endpoints.openai import preflight

        yield preflight(cfg.load.target_url, cfg.load.model, cfg.load.api_key_env)
        return
    from perfkit.serving.launch import launch

    with launch(cfg, overrides=overrides, warmup=warmup, probe_cold_start=probe_cold_start, timeout_s=timeout_s) as handle:
        yield handle


class Watch:
    """The serving process's resources over a `with` block: `usage` after it, None where there is no process to watch."""

    def __init__(self, endpoint: Endpoint, interval_s: float) -> None:
        self._sampler = ResourceSampler(endpoint.pid, interval_s) if endpoint.pid is not None else None
        self.usage: ResourceUsage | None = None

    def __enter__(self) -> Watch:
        if self._sampler is not None:
            self._sampler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._sampler.__exit__(*exc)
            self.usage = self._sampler.usage


def server_metrics(usage: ResourceUsage | None, start: ColdStart | None) -> dict[str, Any]:
    """A variant's server-side figures: measured where perfkit started the process, else `NOT_AVAILABLE` each."""
    out: dict[str, Any] = usage.as_metrics() if usage is not None else dict.fromkeys(SERVER_FIGURES, NOT_AVAILABLE)
    if start is None:
        return out | dict.fromkeys(START_FIGURES, NOT_AVAILABLE)
    return out | {
        "cold_start_s": start.cold_start_s,
        "ready_s": start.ready_s,
        "model_load_s": start.model_load_s,
        "first_response_s": start.first_answer_s,
    }
