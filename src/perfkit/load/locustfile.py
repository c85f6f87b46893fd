"""The perfkit locustfile: run by `locust` in its own process, never imported by perfkit.

Locust monkey-patches the interpreter with gevent when imported (a Jupyter kernel that imports it
dies), so this file is the only place that imports it; `perfkit.load.runner` starts it as a
process and hands it the workload as a JSON file named by `PERFKIT_LOAD_SPEC`.

Every request is a streamed OpenAI chat completion (`stream: true`) with a fixed output length
(`max_tokens` = `min_tokens`, `ignore_eos`; with `workload.output_spread` each request's length is
drawn, seeded by its index, so that rows of a batch end at different steps), so the client sees each token arrive: TTFT is the
first server-sent event that carries text, E2E the `data: [DONE]` line. The stream is read in
small chunks; a 1 KB read would sit on the first tokens until a kilobyte had arrived and make
TTFT equal E2E. Against an endpoint that refuses `min_tokens`/`ignore_eos` (the spec's
`fixed_length` false) neither is sent and each answer is as long as the model makes it; with a
fixed length, a 200 answer with fewer tokens than asked is a failure ("truncated"), not a success.
An external endpoint's API key arrives as `PERFKIT_API_KEY` in the environment (never in the
spec) and replaces the per-user keys. Locust rounds the times in its own statistics, so the `events.request` listener
below writes each request's exact times to a JSONL file per process, which the runner reads back.

Two arrival processes (docs/design.md §2, rule 5):
- closed loop (`ClosedLoopUser`): N users, each with its own bearer key, each sending its next
  request as soon as the previous one is answered. Throughput then obeys Little's law,
  QPS = N / mean latency, so a slow server lowers the offered load and hides its queue.
- open loop (`OpenLoopUser`): one Locust user spawns every request at a Poisson-scheduled time
  (seeded), whether or not earlier ones were answered; latency counts from the *scheduled* send
  time, and the lag between schedule and actual send is recorded, so a generator that falls
  behind is visible rather than silently lowering the load.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Group
from locust import HttpUser, constant, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner
from urllib3 import PoolManager

SPEC: dict[str, Any] = json.loads(Path(os.environ["PERFKIT_LOAD_SPEC"]).read_text())
SHARE = max(1, SPEC["workers"])  # in distributed mode each worker issues its share of the requests
BUDGET = math.ceil(SPEC["requests"] / SHARE)
WARMUP = math.ceil(SPEC["warmup_requests"] / SHARE)
_issued = itertools.count()
_user_ids = itertools.count()
DONE_MESSAGE = "perfkit_budget_done"
API_KEY = os.environ.get("PERFKIT_API_KEY")
_state: dict[str, Any] = {"completed": 0, "workers_done": 0, "out": None, "runner": None}


@events.init.add_listener
def _open_timings(environment: Any, **_: Any) -> None:
    runner = environment.runner
    _state["runner"] = runner
    if isinstance(runner, MasterRunner):  # the master only coordinates; workers send and record
        runner.register_message(DONE_MESSAGE, _worker_done)
        return
    role = "worker" if isinstance(runner, WorkerRunner) else "local"
    path = Path(SPEC["timings_dir"]) / f"timings-{role}-{os.getpid()}.jsonl"
    _state["out"] = path.open("a", buffering=1)


@events.request.add_listener
def _record(response_time: float, context: dict[str, Any], exception: Any, response: Any, **_: Any) -> None:
    row = context.get("perfkit")
    out = _state["out"]
    if row is None or out is None:
        return
    row["status"] = int(getattr(response, "status_code", 0) or 0)
    row["error"] = None if exception is None else str(exception)[:200]
    out.write(json.dumps(row) + "\n")
    _state["completed"] += 1
    runner = _state["runner"]
    if _state["completed"] == BUDGET:  # count reached: stop now rather than at the time limit
        if isinstance(runner, WorkerRunner):
            runner.send_message(DONE_MESSAGE)
        else:
            gevent.spawn(runner.quit)


def _worker_done(environment: Any, msg: Any, **_: Any) -> None:
    _state["workers_done"] += 1
    if _state["workers_done"] == SPEC["workers"]:
        gevent.spawn(environment.runner.quit)


def _claim() -> int | None:
    """The next request's index in this process, or None once the budget is issued."""
    n = next(_issued)
    return n if n < BUDGET else None


def _body(n: int) -> dict[str, Any]:
    prompt = SPEC["prompts"][n % len(SPEC["prompts"])]
    low, high = SPEC["max_tokens"]  # equal for a fixed output length; else drawn per request, seeded by its index
    tokens = low if low == high else random.Random(SPEC["seed"] * 1_000_003 + n).randint(low, high)
    body = {
        "model": SPEC["model"],
        "messages": prompt["messages"],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if SPEC.get("fixed_length", True):
        body |= {"min_tokens": tokens, "ignore_eos": True}
    return body


def _send(client: Any, key: str, n: int, scheduled: float | None = None) -> tuple[int, float]:
    """One streamed request; returns (status, Retry-After seconds)."""
    body = _body(n)
    sent = time.perf_counter()
    start = sent if scheduled is None else scheduled
    row: dict[str, Any] = {
        "index": n,
        "warmup": n < WARMUP,
        "key": key,
        "t_send": time.time() - (sent - start),
        "lag_s": sent - start,
        "ttft_s": None,
        "e2e_s": None,
        "output_tokens": 0,
        "prompt_tokens": SPEC["prompts"][n % len(SPEC["prompts"])]["prompt_tokens"],
        "done": False,
    }
    headers = {"Authorization": f"Bearer {API_KEY or key}"}
    with client.post(SPEC["route"], json=body, headers=headers, stream=True, catch_response=True, name=SPEC["route"]) as resp:
        resp.request_meta["context"]["perfkit"] = row
        status = resp.status_code or 0
        if status == 200:
            try:
                _read_stream(resp, row, start)
            except Exception as exc:  # a stream cut mid-way is a failed request, recorded as such
                resp.failure(f"stream broken: {exc}")
        row["e2e_s"] = time.perf_counter() - start
        resp.request_meta["response_time"] = row["e2e_s"] * 1000.0
        if status == 200 and not row["done"]:
            resp.failure("stream ended without data: [DONE]")
        elif status == 200 and SPEC.get("fixed_length", True) and row["output_tokens"] < body["max_tokens"]:
            resp.failure(f"truncated: {row['output_tokens']} of {body['max_tokens']} tokens")
        retry = float(resp.headers.get("Retry-After") or 0) if status in (429, 503) else 0.0
        if status in (429, 503):
            row["retry_after_s"] = float(resp.headers["Retry-After"]) if resp.headers.get("Retry-After") else None
    return status, retry


def _read_stream(resp: Any, row: dict[str, Any], start: float) -> None:
    counted = 0
    for line in resp.iter_lines(chunk_size=SPEC["read_chunk_bytes"]):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            row["done"] = True
            break
        event = json.loads(data)
        if event.get("usage"):
            row["output_tokens"] = event["usage"].get("completion_tokens", counted)
            row["prompt_tokens"] = event["usage"].get("prompt_tokens", row["prompt_tokens"])
        for choice in event.get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                counted += 1
                if row["ttft_s"] is None:
                    row["ttft_s"] = time.perf_counter() - start
    row["output_tokens"] = row["output_tokens"] or counted


class ClosedLoopUser(HttpUser):
    """One of N closed-loop users: its own key, next request as soon as the last one is answered."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.key = f"{SPEC['key_prefix']}-{os.getpid()}-{next(_user_ids)}"

    @task
    def ask(self) -> None:
        n = _claim()
        if n is None:
            raise StopUser()
        status, retry = _send(self.client, self.key, n)
        if status in (429, 503):  # a polite client honours Retry-After instead of hammering
            gevent.sleep(min(retry, SPEC["retry_after_cap_s"]))


class OpenLoopUser(HttpUser):
    """The open-loop generator: Poisson arrivals at `rate_rps`, each request spawned on schedule."""

    fixed_count = 1
    wait_time = constant(0)
    pool_manager = PoolManager(maxsize=1024, block=False)

    @task
    def schedule(self) -> None:
        rng = random.Random(SPEC["seed"])
        group = Group()
        base = time.perf_counter()
        at = 0.0
        while (n := _claim()) is not None:
            at += rng.expovariate(SPEC["rate_rps"])
            delay = base + at - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            key = f"{SPEC['key_prefix']}-{n % SPEC['users']}"
            group.spawn(_send, self.client, key, n, base + at)
        group.join()
        raise StopUser()
