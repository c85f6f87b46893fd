"""C9 live: chapter summaries inline in the server, or on a Celery queue, while short chats keep coming.

Four variants, in turn, each with the same open-loop short chat load
(`short_share` of capacity, one bearer key per request stream) for `jobs_s`:
- `none`: the short load alone;
- `inline`: every `job_interval_s` a long chat completion (a chapter summary: `job_prompt_tokens`
  in, `job_new_tokens` out) goes to the same server, which batches it with the short requests;
- `queued`: the same jobs are submitted to the Celery queue (perfkit's own Redis) and run by a
  worker process (prefork, one pool process, `worker_threads` torch threads, nice `worker_nice`);
- `isolated`: queued, with the worker moved to a core of its own at the lowest priority (nice 19)
  and a server of its own, with as many torch threads as cores are left, on the other cores
  (`isolation`): whether isolating the worker restores the short requests, and what it costs the
  server (on two cores, half of them). The shared server's threads cannot shrink once it runs, and
  two spinning threads on one core served nothing.
Measured: the short requests' TTFT and E2E (p50, p99 with bootstrap intervals), the job-submit
response time, the jobs' throughput, queue wait and run time. The worker and the server share
the same cores: a queue takes the job out of the request's path, not off the machine.

Why a variant is slow is measured too, over its arrival window (first to last short request sent):
the CPU seconds the server's and the worker's process trees and the whole machine used, against
window x cores, and whether the server kept up with the short load: the share of short requests
not answered by the last arrival, still queued or running or refused (a server that keeps up leaves
about E2E / window of them in flight; one that falls behind leaves 1 - served / offered, and its
queue grows throughout or its admission bound refuses the excess).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from perfkit import processes
from perfkit.config import Config
from perfkit.hardware import CpuClock, usable_cores
from perfkit.jobs.client import JobQueue
from perfkit.jobs.worker import Worker, celery_worker
from perfkit.load.runner import run_load
from perfkit.redis_server import redis_server
from perfkit.serving.launch import ServerHandle
from perfkit.stages.operations import OperationsConfig
from perfkit.stages.operations.common import Percentiles, measured

VARIANTS = ("none", "inline", "queued", "isolated")
LOWEST_PRIORITY = 19


def _threads(pid: int) -> list[int]:
    """Every thread of `pid` and of its children: an affinity set on a process id binds only its main thread."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    return [t.id for p in procs for t in p.threads()]


def _move(tids: list[int], cores: list[int], nice: int | None = None) -> None:
    """Each thread onto `cores` (and to `nice`): affinity and priority are per thread on Linux. A thread that ended
    meanwhile is skipped."""
    for tid in tids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(tid, cores)
            if nice is not None:
                os.setpriority(os.PRIO_PROCESS, tid, nice)


@contextmanager
def isolation(server_pid: int, worker_pid: int) -> Iterator[bool]:
    """Every worker thread on the last core at nice 19, every server thread on the others; the server's cores are given
    back on exit (the worker keeps its core and priority: it runs no-op jobs after this). False where one core is all
    there is. The server should have no more torch threads than the cores it is given (`run_jobs`)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        yield False
        return
    try:
        _move(_threads(worker_pid), cores[-1:], LOWEST_PRIORITY)
        processes.set_group_nice(worker_pid, LOWEST_PRIORITY)
        _move(_threads(server_pid), cores[:-1])
        yield True
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            _move(_threads(server_pid), cores)


@dataclass(frozen=True)
class JobVariant:
    variant: str
    short_ttft: Percentiles | None
    short_e2e: Percentiles | None
    short_requests: int
    short_errors: int
    jobs_submitted: int
    jobs_done: int
    window_s: float
    submit: Percentiles | None  # response time of the job submission (inline: the whole job)
    queue_wait_s_mean: float | None
    job_run_s_mean: float | None
    offered_rps: float = 0.0  # the short load's arrival rate
    arrival_s: float = 0.0  # first to last short request sent: the window the figures below cover
    short_finished_in_window: int = 0  # answered (any status) by the last arrival
    short_ok_in_window: int = 0  # answered 200 by the last arrival
    cores: int = 1
    server_cpu_s: float | None = None  # CPU seconds over the window, process tree, user + system
    worker_cpu_s: float | None = None
    machine_cpu_s: float | None = None  # every process on the machine (load generator and other tenants included)
    isolated: bool = False  # the worker ran on a core of its own (the `isolated` variant, on more than one core)

    @classmethod
    def empty(cls, variant: str) -> JobVariant:
        return cls(variant, None, None, 0, 0, 0, 0, 0.0, None, None, None)

    @property
    def jobs_per_min(self) -> float:
        return 60 * self.jobs_done / self.window_s if self.window_s else 0.0

    @property
    def achieved_rps(self) -> float:
        """Short requests answered 200 within the arrival window, per second of it."""
        return self.short_ok_in_window / self.arrival_s if self.arrival_s else 0.0

    @property
    def arrived_rps(self) -> float:
        """The short requests' realised arrival rate over the window (Poisson: near, not at, `offered_rps`)."""
        return (self.short_requests - 1) / self.arrival_s if self.arrival_s else 0.0

    @property
    def unserved(self) -> int:
        """Short requests sent before the last arrival and not answered 200 by it: still waiting, or refused."""
        return max(0, self.short_requests - 1 - self.short_ok_in_window)

    @property
    def waiting(self) -> int:
        """... of which still queued or running at the last arrival (the rest were refused or failed)."""
        return max(0, self.short_requests - 1 - self.short_finished_in_window)

    @property
    def unserved_share(self) -> float:
        return self.unserved / (self.short_requests - 1) if self.short_requests > 1 else 0.0

    def kept_up(self, max_unserved_share: float) -> bool:
        return self.short_requests > 1 and self.unserved_share <= max_unserved_share

    @property
    def available_cpu_s(self) -> float:
        return self.arrival_s * self.cores

    def cpu_share_pct(self, cpu_s: float | None) -> float | None:
        return None if cpu_s is None or not self.available_cpu_s else 100 * cpu_s / self.available_cpu_s

    def row(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "variant": self.variant,
            "short_requests": self.short_requests,
            "short_errors": self.short_errors,
            "jobs_submitted": self.jobs_submitted,
            "jobs_done": self.jobs_done,
            "jobs_per_min": self.jobs_per_min,
            "queue_wait_s_mean": self.queue_wait_s_mean,
            "job_run_s_mean": self.job_run_s_mean,
        }
        for name, p in (("ttft", self.short_ttft), ("e2e", self.short_e2e), ("submit", self.submit)):
            for k in ("p50_ms", "p99_ms", "p99_ci_low_ms", "p99_ci_high_ms"):
                out[f"{name}_{k}"] = getattr(p, k) if p else None
        out |= {
            "window_s": self.arrival_s,
            "short_offered_rps": self.offered_rps,
            "short_arrived_rps": self.arrived_rps,
            "short_achieved_rps": self.achieved_rps,
            "short_unserved_requests": self.unserved,
            "short_waiting_requests": self.waiting,
            "short_unserved_pct": 100 * self.unserved_share,
            "cores": self.cores,
            "cpu_available_s": self.available_cpu_s,
        }
        for part in ("server", "worker", "machine"):
            cpu = getattr(self, f"{part}_cpu_s")
            out[f"{part}_cpu_s"] = cpu
            out[f"{part}_cpu_share_pct"] = self.cpu_share_pct(cpu)
        return out


@dataclass(frozen=True)
class Diagnosis:
    """Why the queued variant's short requests were slow, from the numbers: `cause` is one of CAUSES."""

    cause: str
    queued_kept_up: bool
    baseline_kept_up: bool
    cores_full: bool  # all processes used >= cpu_full_share of the cores over the queued window
    full_without_worker: bool  # ... and would have, less the worker's CPU seconds


CAUSES = {
    "kept_up": "the server kept up with the short load with jobs queued",
    "load_too_high": "the server fell behind even without jobs: the short load is above what it serves",
    "worker_cpu": "the cores were full only with the worker's CPU: the worker took what the server needed",
    "cpu_full_without_worker": "the cores were full even without the worker's CPU (other processes)",
    "not_cpu": "the server fell behind while the cores had spare time: not explained by CPU shares",
    "unmeasured": "the server fell behind; no CPU figures to say why",
}


def diagnose(none: JobVariant, queued: JobVariant, max_unserved_share: float, cpu_full_share: float) -> Diagnosis:
    """Did the server fall behind with jobs queued, and was it the worker's CPU that made the cores full?"""
    kept, baseline = queued.kept_up(max_unserved_share), none.kept_up(max_unserved_share)
    busy = queued.cpu_share_pct(queued.machine_cpu_s)
    worker = queued.cpu_share_pct(queued.worker_cpu_s) or 0.0
    full = busy is not None and busy >= 100 * cpu_full_share
    without = busy is not None and busy - worker >= 100 * cpu_full_share
    if kept:
        cause = "kept_up"
    elif not baseline:
        cause = "load_too_high"
    elif busy is None:
        cause = "unmeasured"
    elif not full:
        cause = "not_cpu"
    else:
        cause = "cpu_full_without_worker" if without else "worker_cpu"
    return Diagnosis(cause, kept, baseline, full, without)


def job_prompts(cfg: Config, ops: OperationsConfig, n: int) -> list[Any]:
    from perfkit.models import load_tokenizer
    from perfkit.workload import summary_prompts

    tokenizer = load_tokenizer(cfg.resolve(cfg.model.path))
    return summary_prompts(tokenizer, cfg.corpus_dir, n, ops.job_prompt_tokens, ops.job_prompt_tokens * 2, cfg.workload.seed + 1)


def _inline_job(base_url: str, model: str, messages: list[dict[str, str]], tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    body = {"model": model, "messages": messages, "max_tokens": tokens, "min_tokens": tokens, "ignore_eos": True, "temperature": 0}
    r = httpx.post(base_url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer perfkit-jobs"}, timeout=600)
    return time.perf_counter() - t0, r.status_code


def _load_started(folder: Path, load: Future[Any], timeout_s: float = 120.0) -> float:
    """When Locust opened its timings file, i.e. is about to send: the jobs' schedule starts there, with the short load.

    Locust takes seconds to start (more on a busy machine); jobs timed from the call would run
    before the first short request and miss the window the short requests are measured over.
    """
    deadline = time.monotonic() + timeout_s
    while not any(folder.glob("timings-*.jsonl")) and not load.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    return time.time()


def _variant(
    cfg: Config,
    ops: OperationsConfig,
    server: ServerHandle,
    worker: Worker,
    prompts: list[Any],
    jobs: list[Any],
    queue: JobQueue,
    folder: Path,
    capacity: float,
    name: str,
) -> JobVariant:
    rate = ops.short_share * capacity
    n_jobs = 0 if name == "none" else max(1, math.floor(ops.jobs_s / ops.job_interval_s))
    specs = [{"kind": "summary", "messages": list(j.messages), "max_new_tokens": ops.job_new_tokens} for j in jobs[:n_jobs]]
    ids = [f"{name}-{uuid.uuid4().hex[:8]}-{i}" for i in range(n_jobs)]
    submits: list[float] = []
    inline: list[Future[tuple[float, int]]] = []
    isolating = isolation(server.pid, worker.pid) if name == "isolated" else nullcontext(False)
    with (
        isolating as isolated,
        CpuClock({"server": server.pid, "worker": worker.pid}) as clock,
        ThreadPoolExecutor(max_workers=n_jobs + 1) as pool,
    ):
        load = pool.submit(
            run_load,
            cfg,
            server,
            prompts,
            folder / f"jobs-{name}",
            mode="open",
            rate_rps=rate,
            users=ops.quiet_clients,
            requests=math.ceil(rate * ops.jobs_s),
            warmup_requests=0,
            duration_s=ops.jobs_s * 2 + 30,
            key_prefix="perfkit-short",
        )
        started = _load_started(folder / f"jobs-{name}", load)
        for i, spec in enumerate(specs):
            time.sleep(max(0.0, started + i * ops.job_interval_s - time.time()))
            if name == "inline":
                inline.append(pool.submit(_inline_job, server.base_url, cfg.model.name, spec["messages"], ops.job_new_tokens))
            else:
                t0 = time.perf_counter()
                queue.submit(ids[i], spec)
                submits.append(time.perf_counter() - t0)
        rows = measured(load.result().timings)
        window = time.time() - started
        clock.read()
        wait(inline)
    if name == "inline":
        done = [f.result() for f in inline]
        submits = [s for s, _ in done]
        jobs_done = sum(1 for _, code in done if code == 200)
        waits, runs = None, None
    else:
        states = {i: queue.status(i) for i in ids}
        finished = [s for s in states.values() if s.get("state") == "DONE" and float(s["finished"]) <= started + window]
        jobs_done = len(finished)
        waits = [float(s["started"]) - float(s["submitted"]) for s in finished]
        runs = [float(s["finished"]) - float(s["started"]) for s in finished]
        waits, runs = (sum(waits) / len(waits), sum(runs) / len(runs)) if finished else (None, None)  # type: ignore[assignment]
    ok = [r for r in rows if r.ok]
    first, last = (min(r.t_send for r in rows), max(r.t_send for r in rows)) if rows else (started, started)
    cpu = clock.used(first, last) if last > first else {}
    return JobVariant(
        name,
        Percentiles.of([r.ttft_s for r in ok if r.ttft_s is not None]),
        Percentiles.of([r.e2e_s for r in ok]),
        len(rows),
        len(rows) - len(ok),
        n_jobs,
        jobs_done,
        window,
        Percentiles.of(submits),
        waits,
        runs,  # type: ignore[arg-type]
        rate,
        last - first,
        sum(1 for r in rows if r.t_send + r.e2e_s <= last),
        sum(1 for r in ok if r.t_send + r.e2e_s <= last),
        usable_cores(),
        cpu.get("server"),
        cpu.get("worker"),
        cpu.get("machine"),
        isolated,
    )


def submit_probe(queue: JobQueue, count: int, timeout_s: float = 60.0) -> Percentiles | None:
    """The time to submit `count` no-op jobs one after another (a `busy` job of 0 s): what a submit costs the
    request path, over enough submissions for a p99. Waits for them to run, so none lingers into what follows."""
    ids = [f"probe-{uuid.uuid4().hex[:8]}-{i}" for i in range(count)]
    seconds = []
    for job_id in ids:
        t0 = time.perf_counter()
        queue.submit(job_id, {"kind": "busy", "seconds": 0})
        seconds.append(time.perf_counter() - t0)
    queue.wait(ids, timeout_s=timeout_s)
    return Percentiles.of(seconds)


def run_jobs(
    cfg: Config,
    ops: OperationsConfig,
    server: ServerHandle,
    prompts: list[Any],
    folder: Path,
    capacity: float,
    isolated_server: Callable[[int], AbstractContextManager[ServerHandle | None]],
) -> tuple[list[JobVariant], Percentiles | None]:
    """The four variants, then the submit probe (`operations.submit_probe_jobs` no-op jobs). The isolated variant
    runs on `isolated_server(threads)`, started for it with a thread per core the worker leaves, at most as many as the
    shared server's (on one core: `server`, and no isolation); a server that did not start (None) leaves it out."""
    n = max(1, math.floor(ops.jobs_s / ops.job_interval_s)) + 1
    jobs = job_prompts(cfg, ops, n)
    with (
        redis_server(folder / "redis") as broker,
        celery_worker(
            broker.url,
            folder / "worker",
            threads=ops.worker_threads,
            nice=ops.worker_nice,
            visibility_timeout_s=ops.visibility_timeout_s,
            model_path=str(cfg.resolve(cfg.model.path)),
            prepack=cfg.hardware.prepack,
            timeout_s=120,
        ) as worker,
    ):
        queue = JobQueue(broker.url)
        queue.submit("warm-up", {"kind": "summary", "messages": list(jobs[-1].messages), "max_new_tokens": 2})
        queue.wait(["warm-up"], timeout_s=120)  # the pool process loads the model once, before anything is timed
        try:
            variants = [_variant(cfg, ops, server, worker, prompts, jobs, queue, folder, capacity, v) for v in VARIANTS[:-1]]
            left = min(cfg.hardware.threads, usable_cores() - 1)  # no more threads than the shared server has
            with isolated_server(left) if left else nullcontext(server) as own:
                variants += [] if own is None else [_variant(cfg, ops, own, worker, prompts, jobs, queue, folder, capacity, "isolated")]
            return variants, submit_probe(queue, ops.submit_probe_jobs) if ops.submit_probe_jobs else None
        finally:
            queue.close()
