"""The perfkit locustfile: run by `locust` in its own process, never imported by perfkit.

Locust monkey-patches the interpreter with gevent when imported (a Jupyter kernel that imports it
dies), so this file is the only place that imports it; `perfkit.load.runner` starts it as a
process and hands it the workload as a JSON file named by `PERFKIT_LOAD_SPEC`.

Every request is a streamed OpenAI chat completion (`stream: true`) with a fixed output length
(`max_tokens` = `min_tokens`, `ignore_eos`; with `workload.output_spread` each request's length is
drawn, seeded by its index, so that rows of a batch end at different steps), so the client sees each token arrive: TTFT is the
first server-sent event that carries text, E2E the `data: [DONE]` line. The stream is read in
small chunks; a 1 KB read would sit on the first tokens until a kilobyte had arrived and make
TTFT equal E2E. Every chunk that carries text has its arrival recorded (`chunk_s`, seconds from the
send, to 10 µs): the inter-token latencies and the time to second token come from them. Against an
endpoint that refuses `min_tokens`/`ignore_eos` (the spec's
`fixed_length` false) neither is sent and each answer is as long as the model makes it; with a
fixed length, a 200 answer with fewer tokens than asked is a failure ("truncated"), not a success.
An external endpoint's API key arrives as `PERFKIT_API_KEY` in the environment (never in the
spec) and replaces the per-user keys. Locust rounds the times in its own statistics, so the `events.request` listener
below writes each request's exact times to a JSONL file per process, which the runner reads back.

A spec with a `plan` (`perfkit.load.workloads.RequestStream`) sends the plan's requests instead of the
prompts: each with its own messages and output length; a trace's at its own arrival times in the open
loop; multi-turn conversations sending every turn with the whole history, their own earlier answers
included, then pausing `think_time_s` (rows carry the conversation and the turn): in the closed loop
each user holds one conversation at a time, in the open loop conversations arrive at Poisson times at
`rate_rps` / their mean turns, so that their turns offer `rate_rps` requests/s once conversations end as fast as
they arrive: until then later turns have not come due and turns arrive at a fraction of the rate. The open loop
counts that ramp as warm-up, however long the answers make it, and measures from the moment a conversation that
started after the first one reached its last turn reaches its own (`_last_turn`); arrivals are planned over the
whole time limit (`duration_s`), conditioned in blocks of `turns` conversations, so that the measured span,
wherever it falls, is offered the rate within about a block.

Two arrival processes (docs/design.md §2, rule 5):
- closed loop (`ClosedLoopUser`): N users, each with its own bearer key, each sending its next
  request as soon as the previous one is answered. Throughput then obeys Little's law,
  QPS = N / mean latency, so a slow server lowers the offered load and hides its queue.
- open loop (`OpenLoopUser`): one Locust user spawns every request at a Poisson-scheduled time
  (seeded, conditioned on the count: `perfkit.load.arrivals`, so that the point offers its rate),
  whether or not earlier ones were answered; latency counts from the *scheduled* send
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

from perfkit.load.arrivals import poisson_arrivals

SPEC: dict[str, Any] = json.loads(Path(os.environ["PERFKIT_LOAD_SPEC"]).read_text())
PLAN: dict[str, Any] | None = SPEC.get("plan")  # a `workloads.RequestStream`; None: the prompts, cycled, as always
SHARE = max(1, SPEC["workers"])  # in distributed mode each worker issues its share of the requests
BUDGET = math.ceil(SPEC["requests"] / SHARE)
WARMUP = math.ceil(SPEC["warmup_requests"] / SHARE)
MEASURED = BUDGET - WARMUP
_user_ids = itertools.count()
_conversations = itertools.count()
DONE_MESSAGE = "perfkit_budget_done"
API_KEY = os.environ.get("PERFKIT_API_KEY")
# issued: requests claimed; measured_from: the first measured request's index (math.inf while conversations fill);
# generation: the requests claimed when the first conversation reached its last turn
_state: dict[str, Any] = {
    "completed": 0, "workers_done": 0, "out": None, "runner": None,
    "issued": 0, "measured_from": WARMUP, "generation": None,
}  # fmt: skip


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
    if _state["completed"] == _state["measured_from"] + MEASURED:  # count reached: stop now rather than at the time limit
        if isinstance(runner, WorkerRunner):
            runner.send_message(DONE_MESSAGE)
        else:
            gevent.spawn(runner.quit)


def _worker_done(environment: Any, msg: Any, **_: Any) -> None:
    _state["workers_done"] += 1
    if _state["workers_done"] == SPEC["workers"]:
        gevent.spawn(environment.runner.quit)


def _claim() -> int | None:
    """The next request's index in this process, or None once the budget is issued: `MEASURED` requests from the
    first measured one (after `WARMUP`, or later where an open loop's conversations are still filling)."""
    n = _state["issued"]
    if n >= _state["measured_from"] + MEASURED:
        return None
    _state["issued"] = n + 1
    return n


def _last_turn(first: int) -> None:
    """The conversation whose first turn was request `first` is about to claim its last turn. While an open loop's
    conversations fill, the first to get here ran its turns under the ramp's lighter load, and those started since
    answer slower as the load grows: measuring starts when the first of those (a first turn claimed after this) gets
    here too, from its last turn on. Conversations then end about as fast as they arrive, and their turns come at the
    rate."""
    if _state["measured_from"] != math.inf:
        return
    if _state["generation"] is None:
        _state["generation"] = _state["issued"]
    elif first >= _state["generation"]:
        _state["measured_from"] = max(WARMUP, _state["issued"])


def _request(n: int) -> tuple[list[dict[str, str]], int, int]:
    """Request `n`'s messages, output length and templated prompt length: the plan's, or the prompts cycled."""
    if PLAN is not None and PLAN["requests"]:
        planned = PLAN["requests"][n % len(PLAN["requests"])]
        return planned["messages"], planned["max_tokens"], planned["prompt_tokens"]
    prompt = SPEC["prompts"][n % len(SPEC["prompts"])]
    low, high = SPEC["max_tokens"]  # equal for a fixed output length; else drawn per request, seeded by its index
    tokens = low if low == high else random.Random(SPEC["seed"] * 1_000_003 + n).randint(low, high)
    return prompt["messages"], tokens, prompt["prompt_tokens"]


def _body(messages: list[dict[str, str]], tokens: int) -> dict[str, Any]:
    body = {
        "model": SPEC["model"],
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if SPEC.get("fixed_length", True):
        body |= {"min_tokens": tokens, "ignore_eos": True}
    return body


def _send(
    client: Any, key: str, n: int, scheduled: float | None = None, turn: tuple[int, int, list[dict[str, str]], int] | None = None
) -> tuple[int, float, str]:
    """One streamed request; returns (status, Retry-After seconds, the answer's text). `turn`: a conversation's
    (conversation, turn, messages, output length) instead of request `n` of the stream."""
    messages, tokens, prompt_tokens = _request(n) if turn is None else (turn[2], turn[3], 0)
    body = _body(messages, tokens)
    sent = time.perf_counter()
    start = sent if scheduled is None else scheduled
    row: dict[str, Any] = {
        "index": n,
        "warmup": n < _state["measured_from"],
        "key": key,
        "t_send": time.time() - (sent - start),
        "lag_s": sent - start,
        "ttft_s": None,
        "e2e_s": None,
        "output_tokens": 0,
        "prompt_tokens": prompt_tokens,
        "done": False,
        "chunk_s": [],
        "conversation": None if turn is None else turn[0],
        "turn": 0 if turn is None else turn[1],
    }
    text: list[str] = []
    headers = {"Authorization": f"Bearer {API_KEY or key}"}
    with client.post(SPEC["route"], json=body, headers=headers, stream=True, catch_response=True, name=SPEC["route"]) as resp:
        resp.request_meta["context"]["perfkit"] = row
        status = resp.status_code or 0
        if status == 200:
            try:
                _read_stream(resp, row, start, text)
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
    return status, retry, "".join(text)


def _read_stream(resp: Any, row: dict[str, Any], start: float, text: list[str]) -> None:
    counted, arrivals = 0, row["chunk_s"]
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
            if content := (choice.get("delta") or {}).get("content"):
                text.append(content)
                counted += 1
                arrived = time.perf_counter() - start
                arrivals.append(round(arrived, 5))
                if row["ttft_s"] is None:
                    row["ttft_s"] = arrived
    row["output_tokens"] = row["output_tokens"] or counted


def _conversation(client: Any, key: str, first: int, scheduled: float | None = None) -> tuple[int, float]:
    """One conversation from request `first` on: every turn sent with the whole history, its own earlier answers
    included, `think_time_s` after each answer; it ends after its last turn, at a failed turn (the user leaves) or
    when the budget is issued. Returns the last turn's (status, Retry-After seconds)."""
    assert PLAN is not None
    number = next(_conversations)
    conv = PLAN["conversations"][number % len(PLAN["conversations"])]
    history: list[dict[str, str]] = []
    n: int | None = first
    status, retry = 200, 0.0
    for t, content in enumerate(conv["turns"]):
        if n is None:
            break
        messages = [*history, {"role": "user", "content": content}]
        status, retry, answer = _send(client, key, n, scheduled if t == 0 else None, turn=(number, t, messages, conv["max_tokens"][t]))
        if status != 200:
            break
        history = [*messages, {"role": "assistant", "content": answer}]
        if t + 1 < len(conv["turns"]):
            gevent.sleep(PLAN["think_time_s"])  # reading the answer: not part of any request's latency
            if t + 2 == len(conv["turns"]):
                _last_turn(first)
            n = _claim()
    return status, retry


def _mean_turns() -> float:
    assert PLAN is not None
    return sum(len(c["turns"]) for c in PLAN["conversations"]) / len(PLAN["conversations"])


def _arrival(n: int) -> float:
    """A trace's arrival of request `n`, seconds from the start; past its end the trace plays again from the top."""
    assert PLAN is not None
    reqs = PLAN["requests"]
    last = reqs[-1]["at_s"]
    period = last + (last / (len(reqs) - 1) if len(reqs) > 1 and last > 0 else 1.0)  # one mean gap after the last
    return (n // len(reqs)) * period + reqs[n % len(reqs)]["at_s"]


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
        if PLAN is not None and PLAN["kind"] == "multi_turn":
            status, retry = _conversation(self.client, self.key, n)
        else:
            status, retry, _ = _send(self.client, self.key, n)
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
        kind = PLAN["kind"] if PLAN is not None else "single"
        # Conversations arrive at rate_rps / turns, so that their turns offer rate_rps requests/s.
        turns = _mean_turns() if kind == "multi_turn" else 1
        rate = SPEC["rate_rps"] / turns
        if kind == "multi_turn" and max(len(c["turns"]) for c in PLAN["conversations"]) > 1:
            _state["measured_from"] = math.inf  # measured once the conversations fill (`_last_turn`)
        # Conversations: planned over the whole time limit, as the ramp before the measured span lasts as long as the
        # answers make it, and conditioned in blocks of `turns` conversations, as the measured span falls anywhere in
        # the plan; arrivals go on past the plan, unscaled, while the budget lasts.
        count = BUDGET if turns == 1 else max(math.ceil(BUDGET / turns), math.ceil(SPEC["duration_s"] * rate))
        planned = poisson_arrivals(rng, rate, count, block=None if turns == 1 else max(1, round(turns)))
        for spawned in itertools.count():
            if kind == "trace":  # the scheduler alone claims here: the request it spawns next is number `spawned`
                at = _arrival(spawned)
            else:  # past the plan (conversations still starting while the budget lasts): the same process, unscaled
                at = planned[spawned] if spawned < len(planned) else at + rng.expovariate(rate)
            delay = base + at - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            # Claimed when due, not before the wait: a claim held over the wait would take a number from the later
            # turns due in it, which at the budget's end then go unsent, and the warm-up would end out of send order.
            if (n := _claim()) is None:
                break
            key = f"{SPEC['key_prefix']}-{n % SPEC['users']}"
            group.spawn(_conversation if kind == "multi_turn" else _send, self.client, key, n, base + at)
        group.join()
        raise StopUser()
