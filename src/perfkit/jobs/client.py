"""Submitting jobs and reading their state (`perfkit:job:<id>` hashes beside the broker's queue)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import redis

from perfkit.jobs.tasks import DONE, FAILED, JOB_KEY, QUEUED, make_app


class JobQueue:
    def __init__(self, redis_url: str) -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.app = make_app(redis_url)

    def submit(self, job_id: str, spec: dict[str, Any]) -> bool:
        """Record and queue a job; False (nothing queued) when a job with this id was already submitted."""
        key = JOB_KEY + job_id
        if not self.redis.hsetnx(key, "state", QUEUED):
            return False
        self.redis.hset(
            key, mapping={"spec": json.dumps(spec), "submitted": time.time(), "attempts": 0, "runs_finished": 0, "completions": 0}
        )
        self.app.send_task("perfkit.run_job", args=[job_id], task_id=job_id)
        return True

    def submit_raw(self, job_id: str, spec_text: str) -> None:
        """Queue a job whose stored spec is `spec_text` as given (tests: a malformed job)."""
        key = JOB_KEY + job_id
        self.redis.hset(key, mapping={"state": QUEUED, "spec": spec_text, "submitted": time.time(), "attempts": 0})
        self.app.send_task("perfkit.run_job", args=[job_id], task_id=job_id)

    def status(self, job_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(JOB_KEY + job_id).items()}

    def wait(self, job_ids: Iterable[str], timeout_s: float, poll_s: float = 0.1) -> dict[str, dict[str, str]]:
        """The jobs' states once each is DONE or FAILED, or at `timeout_s` as they are."""
        ids = list(job_ids)
        deadline = time.monotonic() + timeout_s
        while True:
            states = {i: self.status(i) for i in ids}
            if all(s.get("state") in (DONE, FAILED) for s in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(poll_s)

    def close(self) -> None:
        self.redis.close()
