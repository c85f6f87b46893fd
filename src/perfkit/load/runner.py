"""Start Locust as its own process against a URL, bounded in count and time, and read back exact timings.

The workload travels to the locustfile as a JSON file (`PERFKIT_LOAD_SPEC`): the prompts from
`workload.summary_prompts` as chat messages with their exact token counts, the fixed output
length, seed, request budget and mode. Locust stops on its own once the budget is answered, and
`-t duration_s` bounds it in time; a run that still overstays is killed with its process group.

While it runs, `hardware.ResourceSampler` watches each Locust process: a gevent process is
single-threaded, so one near a full core is the bottleneck and the run says so.

Distributed mode (`load.workers: N`) starts a master and N workers on this machine (each worker
writes its own timings file); workers on other machines join with
`locust -f src/perfkit/load/locustfile.py --worker --master-host HOST` and the same
`PERFKIT_LOAD_SPEC` file, writing their timings where that file's `timings_dir` points.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from perfkit.config import Config
from perfkit.endpoints.base import Endpoint, EndpointFacts
from perfkit.endpoints.chat import CHAT_ROUTE
from perfkit.endpoints.openai import api_key
from perfkit.energy import Energy, EnergyMeter
from perfkit.errors import PerfkitError
from perfkit.hardware import ResourceSampler
from perfkit.load.results import LoadSummary, RequestTiming, read_timings, summarize
from perfkit.load.workloads import RequestStream
from perfkit.processes import free_port, spawn, stop
from perfkit.workload import Prompt, summary_prompts

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
API_KEY_ENV = "PERFKIT_API_KEY"  # the external endpoint's key, handed to Locust in its environment only
GRACE_S = 30.0  # Locust's own start-up and shutdown on top of its run time


class LoadError(PerfkitError, RuntimeError):
    """Locust did not run: the message carries the tail of its log."""


@dataclass(frozen=True)
class LoadRun:
    """One Locust run: exact rows, the summary over the measured ones, the generator's own load."""

    timings: tuple[RequestTiming, ...]
    summary: LoadSummary
    wall_s: float
    log_path: Path
    energy: Energy = Energy(None, why="not measured")  # over the whole run, warm-up included (`perfkit.energy`)

    @property
    def output_tokens(self) -> int:
        """Every token the run received, warm-up included: what the energy counters saw produced."""
        return sum(r.output_tokens for r in self.timings)

    def energy_metrics(self) -> dict[str, Any]:
        return self.energy.as_metrics(self.output_tokens)


def served_prompts(cfg: Config) -> list[Prompt]:
    """The workload's prompts (fixed seed and token length) as a client sends them: tokenizer only, no weights."""
    from perfkit.models import load_tokenizer  # torch and transformers load only when prompts are needed

    tokenizer = load_tokenizer(cfg.resolve(cfg.model.path))
    w = cfg.workload
    return summary_prompts(tokenizer, cfg.corpus_dir, w.num_prompts, w.prompt_tokens, w.passage_words, w.seed)


def write_spec(
    cfg: Config,
    prompts: Sequence[Prompt],
    folder: Path,
    *,
    requests: int,
    warmup_requests: int,
    users: int,
    rate_rps: float,
    endpoint: EndpointFacts,
    key_prefix: str = "perfkit-user",
    stream: RequestStream | None = None,
    duration_s: float,
) -> Path:
    """The locustfile's input: workload, budget and mode, as JSON in `folder` (never an API key: see `run_locust`)."""
    spec = {
        "model": endpoint.model,
        "fixed_length": endpoint.fixed_length,
        "route": CHAT_ROUTE,
        "prompts": [{"messages": list(p.messages), "prompt_tokens": len(p.input_ids)} for p in prompts],
        "max_tokens": list(cfg.workload.output_range),
        "seed": cfg.workload.seed,
        "requests": requests + warmup_requests,
        "warmup_requests": warmup_requests,
        "users": users,
        "rate_rps": rate_rps,
        "duration_s": duration_s,
        "workers": cfg.load.workers,
        "read_chunk_bytes": cfg.load.read_chunk_bytes,
        "retry_after_cap_s": cfg.load.retry_after_cap_s,
        "key_prefix": key_prefix,
        "timings_dir": str(folder),
        "plan": stream.spec() if stream is not None else None,
    }
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def locust_command(*args: str, locustfile: Path = LOCUSTFILE) -> list[str]:
    """`python -m locust -f <locustfile> ...` in this interpreter."""
    return [sys.executable, "-m", "locust", "-f", str(locustfile), "--skip-log-setup", *args]


def run_load(
    cfg: Config,
    endpoint: Endpoint,
    prompts: Sequence[Prompt],
    folder: Path,
    *,
    mode: str | None = None,
    users: int | None = None,
    rate_rps: float | None = None,
    requests: int | None = None,
    warmup_requests: int | None = None,
    duration_s: float | None = None,
    key_prefix: str = "perfkit-user",
    stream: RequestStream | None = None,
) -> LoadRun:
    """Run Locust against `endpoint`'s URL with `cfg.load` (each keyword overrides its `load.*` key).

    The endpoint's facts give the model to ask for, whether it takes a fixed output length and the
    environment variable holding its API key. `folder` receives the spec, Locust's log and one
    timings file per Locust process; it must not
    hold timings from an earlier run. Each client's bearer key is `key_prefix`-N, so two runs at once
    with different prefixes are different clients to the server. `stream` (`workloads.served_stream`)
    replaces `prompts` with another workload's requests. An open loop of conversations counts as warm-up every turn
    sent before its conversations fill (the locustfile's `_last_turn`), `warmup_requests` at least, and measures
    `requests` turns after them.
    """
    facts = endpoint.facts
    if facts.base_url is None:
        raise LoadError(f"{facts.engine} has no URL: a load generator reaches served endpoints only")
    load = cfg.load
    mode = mode or load.mode
    users = users or load.users
    rate = rate_rps or load.rate_rps
    duration = duration_s or load.duration_s
    if stream is not None and stream.kind == "trace" and mode == "closed":
        raise LoadError("a trace workload replays its own arrival times: set load.mode to open")
    if mode == "open" and load.workers:  # one OpenLoopUser in all: on one worker, with that worker's share of requests
        raise LoadError(f"load.workers = {load.workers}: the open loop schedules every request from one process; set it to 0")
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.glob("timings-*.jsonl")):
        raise LoadError(f"{folder} already holds timings from an earlier run")
    requests = load.requests if requests is None else requests
    warmup_requests = load.warmup_requests if warmup_requests is None else warmup_requests
    spec = write_spec(
        cfg,
        prompts,
        folder,
        requests=requests,
        warmup_requests=warmup_requests,
        users=users,
        rate_rps=rate,
        key_prefix=key_prefix,
        endpoint=facts,
        stream=stream,
        duration_s=duration,
    )
    secrets = {API_KEY_ENV: key} if (key := api_key(facts.api_key_env)) else {}
    user_class = "ClosedLoopUser" if mode == "closed" else "OpenLoopUser"
    locust_users = users if mode == "closed" else 1
    run = ["--headless", "--host", facts.base_url, "-u", str(locust_users), "-r", str(load.spawn_rate), "-t", f"{math.ceil(duration)}s"]
    run += ["--exit-code-on-error", "0", "--only-summary", "--stop-timeout", "5", "--loglevel", "WARNING"]
    commands: list[list[str]] = []
    if load.workers:
        port = str(load.master_port or free_port())
        commands.append(
            locust_command(
                *run,
                "--master",
                "--master-bind-host",
                "127.0.0.1",
                "--master-bind-port",
                port,
                "--expect-workers",
                str(load.workers),
                user_class,
            )
        )
        commands += [locust_command("--worker", "--master-host", "127.0.0.1", "--master-port", port, user_class)] * load.workers
    else:
        commands.append(locust_command(*run, user_class))
    started = time.perf_counter()
    with EnergyMeter() as meter:
        timings, busiest, log_path = run_locust(commands, spec, duration + GRACE_S, cfg.hardware.sample_interval_s, secrets)
    wall = time.perf_counter() - started
    if all(r.warmup for r in timings):  # e.g. conversations that never filled before the time limit
        why = ": the conversations never filled" if mode == "open" and stream is not None and stream.kind == "multi_turn" else ""
        raise LoadError(f"all {len(timings)} requests sent in {duration:g} s were warm-up{why}")
    summary = summarize(
        timings,
        mode=mode,
        users=users,
        client_cpu_pct=busiest,
        max_client_cpu_pct=load.max_client_cpu_pct,
        max_lag_ms=load.max_lag_ms,
        objectives_ms=(cfg.slo.ttft_p99_ms, cfg.slo.tpot_p99_ms),
        slice_s=load.timeslice_s,
    )
    if summary.requests < requests:  # the time limit ended the run first: fewer samples than asked for
        cut = f"time limit {duration:g} s reached after {summary.requests} of {requests} measured requests"
        summary = replace(summary, flags=(*summary.flags, cut))
    return LoadRun(tuple(timings), summary, wall, log_path, meter.energy)


def run_locust(
    commands: Sequence[list[str]], spec: Path, timeout_s: float, sample_interval_s: float, secrets: Mapping[str, str] | None = None
) -> tuple[list[RequestTiming], float, Path]:
    """Run Locust processes (the first is the one that ends the run) with `spec`, each by `processes.spawn`.

    Returns the timing rows the locustfile wrote beside `spec` (`timings-*.jsonl`), the mean CPU%
    of the busiest Locust process, and the log. Every process is stopped on the way out, also when
    the first overstays `timeout_s`; no rows at all raises LoadError with the log's tail.
    """
    folder = spec.parent
    env = os.environ | {"PERFKIT_LOAD_SPEC": str(spec), "PYTHONUNBUFFERED": "1"} | dict(secrets or {})  # keys: environment only
    log_path = folder / "locust.log"
    with ExitStack() as stack, log_path.open("w") as log:
        procs = [spawn(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder) for cmd in commands]
        for proc in procs:
            stack.callback(stop, proc)
        samplers = [stack.enter_context(ResourceSampler(p.pid, sample_interval_s)) for p in procs]
        try:
            procs[0].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop(procs[0])
        for proc in procs[1:]:
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                stop(proc)
    timings = read_timings(sorted(folder.glob("timings-*.jsonl")))
    if not timings:
        raise LoadError(f"Locust recorded no requests; its log ends:\n{log_path.read_text()[-3000:]}")
    return timings, max(s.usage.cpu_util_pct for s in samplers), log_path
