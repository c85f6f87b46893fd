"""A Celery worker as perfkit's child: prefork, one pool process, its torch threads and nice level set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from perfkit import processes
from perfkit.errors import PerfkitError
from perfkit.jobs.tasks import BROKER_ENV, QUEUE


@dataclass
class Worker:
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []

    def kill_child(self) -> int:
        """SIGKILL the pool process (mid-job); the worker starts another. Returns its pid."""
        child = self.children()[0]
        child.kill()
        return child.pid

    def kill(self) -> None:
        """SIGKILL the whole worker, pool included: no chance to give its job back."""
        _signal_group(self.proc, signal.SIGKILL)
        self.proc.wait()

    def ready(self) -> bool:
        return "ready." in self.log_path.read_text(errors="replace")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@contextmanager
def celery_worker(
    broker_url: str,
    folder: Path,
    *,
    name: str = "perfkit-worker",
    threads: int = 1,
    nice: int = 10,
    visibility_timeout_s: float = 60.0,
    restore_interval_s: float = 1.0,
    model_path: str | None = None,
    prepack: bool = False,
    timeout_s: float = 60.0,
) -> Iterator[Worker]:
    """Start `celery worker` (prefork, concurrency 1, `nice`, `threads` torch threads); stop it on exit. Summary jobs
    run the model at `model_path`, its linear weights prepacked with `prepack` (`perfkit.prepack`)."""
    folder.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        BROKER_ENV: broker_url,
        "PERFKIT_JOBS_VISIBILITY_S": str(visibility_timeout_s),
        "PERFKIT_JOBS_RESTORE_S": str(restore_interval_s),
        "PERFKIT_JOBS_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    if model_path:
        env["PERFKIT_JOBS_MODEL"] = model_path
        env["PERFKIT_JOBS_PREPACK"] = "1" if prepack else "0"
    cmd = [
        "nice",
        "-n",
        str(nice),
        sys.executable,
        "-m",
        "celery",
        "-A",
        "perfkit.jobs.tasks",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        "1",
        "-Q",
        QUEUE,
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        "INFO",
    ]
    log_path = folder / f"{name}.log"
    with log_path.open("ab") as log:
        proc = processes.spawn(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    processes.set_group_nice(proc.pid, nice)  # else `nice` orders the worker only within its own session
    worker = Worker(proc, log_path)
    try:
        deadline = time.monotonic() + timeout_s
        while not (worker.ready() and worker.children()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PerfkitError(f"celery worker did not start:\n{log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield worker
    finally:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
