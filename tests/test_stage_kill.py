"""`kill -9` of `perfkit stage baseline` in the middle of its load: no server, Locust or kernel survives
it, and the next look at MLflow finds its run FAILED with the reason (nested runs: tests/test_processes.py);
`kill -9` of `perfkit stage quantization` while a scheme is timed: neither the forkserver nor its child survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import yaml
from conftest import REPO
from test_processes import _wait_gone
from test_stage_runner import runs

from perfkit import processes, tracking


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_stage_once(root, stage: str, smoke: dict, reached: Callable[[list[psutil.Process]], bool], what: str) -> int:
    """Run `perfkit stage STAGE --smoke` with `smoke` merged into params.yaml's smoke section, SIGKILL its driver
    once `reached(descendants)`, and check that none of its processes and no perfkit process of `root` survives.
    Returns the killed driver's pid."""
    (root / "data" / "claims.yaml").symlink_to(REPO / "data" / "claims.yaml")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["smoke"] |= {k: params["smoke"].get(k, {}) | v for k, v in smoke.items()}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    driver = subprocess.Popen(
        [sys.executable, "-m", "perfkit", "stage", stage, "--smoke"],
        cwd=root,
        env=os.environ | {"PERFKIT_ROOT": str(root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not reached(_descendants(driver.pid)) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert reached(_descendants(driver.pid)), f"the stage never reached {what}"
        started = [p.pid for p in _descendants(driver.pid)]
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        left = _wait_gone(started)
        assert left == [], [(p, psutil.Process(p).cmdline()[:4], psutil.Process(p).ppid()) for p in left]
        assert processes.leftovers(root) == []
    finally:
        if driver.poll() is None:
            driver.kill()
    return driver.pid


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _under_load(procs: list[psutil.Process]) -> bool:
    lines = [_cmdline(p) for p in procs]
    return all(any(f"perfkit {k}" in c or f"-m {k}" in c for c in lines) for k in ("serve", "locust"))


def _timing_a_scheme(procs: list[psutil.Process]) -> bool:
    return any(c for p in procs if "multiprocessing.forkserver" in _cmdline(p) for c in p.children())


def test_sigkill_of_the_stage_driver_leaves_no_process_and_a_failed_run(perfkit_root):
    # a load long enough to be killed in
    smoke = {"load": {"users": 2, "requests": 100_000, "warmup_requests": 0, "duration_s": 600}}
    pid = _kill_stage_once(perfkit_root, "baseline", smoke, _under_load, "its load")
    assert [r.info.status for r in runs(perfkit_root, "baseline")] == ["RUNNING"]
    assert len(tracking.fail_abandoned_runs("baseline", perfkit_root)) == 1
    failed = runs(perfkit_root, "baseline")
    assert {r.info.status for r in failed} == {"FAILED"}
    assert all(str(pid) in r.data.tags["perfkit.failed_reason"] for r in failed)


def test_sigkill_of_a_stage_timing_a_scheme_leaves_no_forkserver_or_child(perfkit_root):
    # a timing long enough to be killed in
    smoke = {"measure": {"max_duration_s": 600.0}, "quantization": {"repeats": 10_000, "schemes": ["fp32"]}}
    _kill_stage_once(perfkit_root, "quantization", smoke, _timing_a_scheme, "a forked timing child")
