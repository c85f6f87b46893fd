"""The Celery job queue on perfkit's own Redis: no job lost or completed twice when a worker dies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("celery", reason="celery is not installed")

from perfkit.hardware import CpuClock  # noqa: E402
from perfkit.jobs.client import JobQueue  # noqa: E402
from perfkit.jobs.worker import celery_worker  # noqa: E402
from perfkit.redis_server import redis_server  # noqa: E402

VISIBILITY_S = 4.0  # longer than the longest test job (2 s)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[str, JobQueue]]:
    with redis_server(tmp_path / "redis") as server:
        queue = JobQueue(server.url)
        yield server.url, queue
        queue.close()


def _wait_running(queue: JobQueue, job_id: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while queue.status(job_id).get("state") != "RUNNING":
        assert time.monotonic() < deadline, queue.status(job_id)
        time.sleep(0.05)


def test_a_job_submitted_twice_runs_once_and_bad_jobs_fail_without_retry(broker, tmp_path):
    url, queue = broker
    with celery_worker(url, tmp_path, visibility_timeout_s=VISIBILITY_S):
        assert queue.submit("a", {"kind": "busy", "seconds": 0.2})
        assert not queue.submit("a", {"kind": "busy", "seconds": 0.2})  # deduplicated by id
        queue.submit_raw("malformed", "{not json")
        queue.submit("unknown", {"kind": "no-such-kind"})
        queue.submit("missing", {"kind": "busy"})  # no `seconds`
        states = queue.wait(["a", "malformed", "unknown", "missing"], timeout_s=30)
        time.sleep(1.5)  # long enough for a retry loop to show
        after = {i: queue.status(i) for i in states}
    assert states["a"]["state"] == "DONE" and after["a"]["attempts"] == "1" and after["a"]["completions"] == "1"
    for bad, error in (("malformed", "JSONDecodeError"), ("unknown", "unknown job kind"), ("missing", "KeyError")):
        assert after[bad]["state"] == "FAILED" and error in after[bad]["error"]
        assert after[bad]["attempts"] == "1"


def test_a_killed_pool_child_gives_its_job_back_and_it_completes_once(broker, tmp_path):
    url, queue = broker
    with celery_worker(url, tmp_path, visibility_timeout_s=VISIBILITY_S) as worker:
        queue.submit("long", {"kind": "busy", "seconds": 2.0})
        queue.submit("next", {"kind": "busy", "seconds": 0.2})
        _wait_running(queue, "long")
        killed = worker.kill_child()
        states = queue.wait(["long", "next"], timeout_s=30)
    assert states["long"]["pid"] != str(killed)  # finished by the pool's new process
    for job in ("long", "next"):
        assert states[job]["state"] == "DONE" and states[job]["completions"] == "1", states[job]
    assert states["long"]["attempts"] == "2" and states["long"]["runs_finished"] == "1"


def test_a_killed_worker_loses_no_job_another_worker_finishes_it_once(broker, tmp_path):
    url, queue = broker
    with celery_worker(url, tmp_path, name="first", visibility_timeout_s=VISIBILITY_S) as first:
        queue.submit("long", {"kind": "busy", "seconds": 2.0})
        queue.submit("next", {"kind": "busy", "seconds": 0.2})
        _wait_running(queue, "long")
        first.kill()  # no chance to give the job back: it stays unacknowledged in Redis
        killed_at = time.monotonic()
    assert queue.status("long")["state"] == "RUNNING"
    with celery_worker(url, tmp_path, name="second", visibility_timeout_s=VISIBILITY_S):
        states = queue.wait(["long", "next"], timeout_s=40)
        back_after_s = time.monotonic() - killed_at
    for job in ("long", "next"):
        assert states[job]["state"] == "DONE" and states[job]["completions"] == "1", states[job]
    assert states["long"]["attempts"] == "2"
    assert back_after_s >= VISIBILITY_S - 1  # not handed out again while the first might still be running it


def test_the_worker_trees_cpu_seconds_include_its_pool_process_and_fit_in_the_machines(broker, tmp_path):
    url, queue = broker
    with celery_worker(url, tmp_path, visibility_timeout_s=VISIBILITY_S) as worker:
        child = worker.children()[0].pid
        with CpuClock({"worker": worker.pid, "pool": child}, interval_s=0.05) as clock:
            queue.submit("spin", {"kind": "busy", "seconds": 1.0})
            assert queue.wait(["spin"], timeout_s=30)["spin"]["state"] == "DONE"
        used = clock.used(clock.readings[0][0], clock.readings[-1][0])
    assert used["pool"] > 0.05  # the job spun in the pool process, not in the worker's main process
    assert used["worker"] >= used["pool"] - 1e-9  # the worker's tree holds its pool (sums of floats round: 0.9999999999999999)
    assert used["machine"] >= used["worker"] - 0.05  # the whole machine's busy time holds both (tick rounding aside)
