"""A real Prometheus server for one run, and a watcher that records when its alerts fire.

`prometheus(targets, rules_text, workdir)` writes a config that scrapes each target's /metrics
every `scrape_interval_s` and evaluates the rules every `eval_interval_s`, starts the
`prometheus` binary (Debian's package; `availability()` says why not when it is missing) on a free
loopback port with its TSDB in `workdir`, waits until /-/ready, and always stops it. Prometheus
evaluates a rule on its own clock: an alert is `pending` once its expression holds and `firing`
after `for:`, so the delay from an overload to a page is up to one scrape, plus the rate window
filling past the threshold, plus `for:`, plus one evaluation. `AlertWatcher` polls
/api/v1/alerts from a thread and keeps the timeline in epoch seconds, the clock of Prometheus'
own samples (`query_range`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from perfkit import processes
from perfkit.errors import PerfkitError

BINARY = "prometheus"


class PrometheusError(PerfkitError, RuntimeError):
    """Prometheus did not start or answer; the message carries its log's tail."""


def availability() -> str | None:
    """None when the `prometheus` binary can run here, else why not (the stage reports it as skipped)."""
    if shutil.which(BINARY) is None:
        return "the prometheus binary is not installed (Debian/Ubuntu: apt-get install --no-install-recommends prometheus)"
    return None


@dataclass(frozen=True)
class Prometheus:
    base_url: str
    pid: int
    log_path: Path

    def _get(self, path: str, **params: Any) -> Any:
        r = httpx.get(self.base_url + path, params=params, timeout=5.0)
        r.raise_for_status()
        return r.json()["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/query", query=expr)["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts: each with labels (`alertname`), `state` (pending / firing) and `activeAt`."""
        return list(self._get("/api/v1/alerts")["alerts"])

    def query_range(self, expr: str, start: float, end: float, step_s: float = 1.0) -> list[tuple[float, float]]:
        """(epoch seconds, value) of `expr` over [start, end]; the first series only (aggregate to one)."""
        result = self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step_s)["result"]
        return [(float(t), float(v)) for t, v in result[0]["values"]] if result else []

    def targets_up(self) -> int:
        return sum(1 for t in self._get("/api/v1/targets")["activeTargets"] if t["health"] == "up")


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"  # Prometheus durations take integers only


def config(targets: Sequence[str], rule_file: Path, scrape_interval_s: float, eval_interval_s: float) -> dict[str, Any]:
    return {
        "global": {
            "scrape_interval": _ms(scrape_interval_s),
            "evaluation_interval": _ms(eval_interval_s),
            "scrape_timeout": _ms(min(scrape_interval_s, 10)),
        },
        "rule_files": [str(rule_file)],
        "scrape_configs": [{"job_name": "perfkit", "metrics_path": "/metrics", "static_configs": [{"targets": list(targets)}]}],
    }


@contextmanager
def prometheus(
    targets: Sequence[str],
    rules_text: str,
    workdir: Path,
    *,
    scrape_interval_s: float = 1.0,
    eval_interval_s: float = 1.0,
    timeout_s: float = 30.0,
) -> Iterator[Prometheus]:
    """Start Prometheus scraping `targets` ("host:port") with the alert rules `rules_text`; stop it on exit."""
    reason = availability()
    if reason:
        raise PrometheusError(reason)
    workdir.mkdir(parents=True, exist_ok=True)
    rule_file = workdir / "alerts.yml"
    rule_file.write_text(rules_text)
    cfg_file = workdir / "prometheus.yml"
    cfg_file.write_text(yaml.safe_dump(config(targets, rule_file, scrape_interval_s, eval_interval_s)))
    port = processes.free_port()
    log_path = workdir / "prometheus.log"
    cmd = [
        BINARY,
        f"--config.file={cfg_file}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with log_path.open("w") as log:
        proc = processes.spawn(cmd, stdout=log, stderr=subprocess.STDOUT)
    handle = Prometheus(f"http://127.0.0.1:{port}", proc.pid, log_path)
    try:
        processes.wait_ready(proc, handle.base_url + "/-/ready", timeout_s, log_path, PrometheusError, "prometheus")
        yield handle
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class AlertWatcher:
    """Polls `prom.alerts()` every `interval_s` in a thread; `samples` holds (epoch seconds, {alert: state})."""

    prom: Prometheus
    interval_s: float = 0.5
    samples: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> AlertWatcher:
        self._thread = threading.Thread(target=self._run, name="perfkit-alert-watcher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            try:
                states = {a["labels"]["alertname"]: a["state"] for a in self.prom.alerts()}
            except (httpx.HTTPError, KeyError, ValueError):
                self.errors += 1
            else:
                self.samples.append((t, states))
            self._stop.wait(self.interval_s)

    def active(self) -> bool:
        """Whether any alert was pending or firing at the last poll."""
        return bool(self.samples and self.samples[-1][1])

    def intervals(self, alert: str, state: str = "firing") -> list[tuple[float, float | None]]:
        """(start, end) of each stretch in which `alert` was in `state`; end None while it still is."""
        return intervals(self.samples, alert, state)


def intervals(samples: Sequence[tuple[float, dict[str, str]]], alert: str, state: str = "firing") -> list[tuple[float, float | None]]:
    out: list[tuple[float, float | None]] = []
    start: float | None = None
    for t, states in samples:
        on = states.get(alert) == state
        if on and start is None:
            start = t
        elif not on and start is not None:
            out.append((start, t))
            start = None
    if start is not None:
        out.append((start, None))
    return out
