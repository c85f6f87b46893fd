"""The Celery app and its one task: run the job whose spec is stored under its id.

Settings that make a killed worker lose no job (each one's default loses or delays it):
- `task_acks_late`: the message is acknowledged when the job has run, not when it is received;
- `task_reject_on_worker_lost`: a pool child that dies mid-job sends its message back at once;
- `worker_prefetch_multiplier` 1: a worker holds one job beyond the running one, not four;
- `visibility_timeout` longer than the longest job: an unacknowledged message (its whole worker was
  killed) is given to another worker after it, never while the first may still be running it;
- kombu's `unacked_restore_interval` and `unacked_restore_throttle` lowered: with the defaults
  (10 s x every 10th sweep) a dead worker's job waits up to ~100 s past the visibility timeout.

A job's spec is JSON with a `kind`: `summary` (a chat completion of `max_new_tokens` over chat
`messages`, or over "Summarize this chapter" + `text`, with the model at `PERFKIT_JOBS_MODEL`,
loaded once per pool process, its linear weights prepacked where `PERFKIT_JOBS_PREPACK` is 1) or `busy` (hold a core for `seconds`, a
stand-in of known cost). A malformed spec or an unknown kind ends FAILED with its error and is not
retried. The hash `perfkit:job:<id>` records state, attempts, runs that finished, and completions
(the first finished run sets `finished`, HSETNX, so a redelivered job completes once).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

QUEUE = "perfkit-jobs"
JOB_KEY = "perfkit:job:"
QUEUED, RUNNING, DONE, FAILED = "QUEUED", "RUNNING", "DONE", "FAILED"
BROKER_ENV = "PERFKIT_JOBS_BROKER"


def make_app(broker_url: str, visibility_timeout_s: float = 60.0, restore_interval_s: float = 1.0) -> Celery:
    app = Celery("perfkit-jobs", broker=broker_url, backend=broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s,
            "unacked_restore_interval": restore_interval_s,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=3600,
    )
    app.task(name="perfkit.run_job", bind=True)(_run_job)
    return app


def _redis(task: Any) -> redis.Redis:
    return redis.Redis.from_url(task.app.conf.broker_url)


def _busy(spec: dict[str, Any]) -> dict[str, Any]:
    end = time.perf_counter() + float(spec["seconds"])
    n = 0
    while time.perf_counter() < end:
        n += 1
    return {"loops": n}


_MODEL: dict[str, Any] = {}


def _summary(spec: dict[str, Any]) -> dict[str, Any]:
    from perfkit.engine import Engine
    from perfkit.hardware import pin_threads, resolve_device
    from perfkit.models import load_causal_lm
    from perfkit.workload import chat_ids

    if "engine" not in _MODEL:  # once per pool process
        pin_threads(int(os.environ.get("PERFKIT_JOBS_THREADS", "1")))
        device = resolve_device("cpu")
        model, tokenizer = load_causal_lm(os.environ["PERFKIT_JOBS_MODEL"], device)
        _MODEL["engine"] = Engine(model, tokenizer, device, prepack=os.environ.get("PERFKIT_JOBS_PREPACK") == "1")
    engine = _MODEL["engine"]
    messages = spec["messages"] if "messages" in spec else [{"role": "user", "content": f"Summarize this chapter:\n\n{spec['text']}"}]
    ids = chat_ids(engine.tokenizer, messages)
    gen = engine.generate(ids, int(spec["max_new_tokens"]), stop_at_eos=False)
    return {"tokens": len(gen.token_ids), "prompt_tokens": len(ids), "text": gen.text[:200]}


KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"summary": _summary, "busy": _busy}


def _run_job(task: Any, job_id: str) -> dict[str, Any]:
    r = _redis(task)
    key = JOB_KEY + job_id
    state = r.hget(key, "state")
    if state is None:
        raise ValueError(f"job {job_id!r} was never submitted")
    if state.decode() in (DONE, FAILED):  # a redelivery of a job that already ended
        return {"duplicate": True}
    r.hincrby(key, "attempts", 1)
    r.hset(key, mapping={"state": RUNNING, "started": time.time(), "pid": os.getpid()})
    try:
        spec = json.loads(r.hget(key, "spec") or b"")
        kind = spec["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}; known: {', '.join(KINDS)}")
        result = KINDS[kind](spec)
    except Exception as exc:
        _finish(r, key, FAILED, {"error": f"{type(exc).__name__}: {exc}"})
        raise
    r.hincrby(key, "runs_finished", 1)
    _finish(r, key, DONE, {"result": json.dumps(result)})
    return result


def _finish(r: redis.Redis, key: str, state: str, fields: dict[str, Any]) -> None:
    if r.hsetnx(key, "finished", time.time()):  # the first run to finish completes the job; a second changes nothing
        r.hset(key, mapping={"state": state, **fields})
        r.hincrby(key, "completions", 1)


# The worker's app (`celery -A perfkit.jobs.tasks worker`): broker and timeouts from its environment.
app = make_app(
    os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/0"),
    float(os.environ.get("PERFKIT_JOBS_VISIBILITY_S", "60")),
    float(os.environ.get("PERFKIT_JOBS_RESTORE_S", "1")),
)
