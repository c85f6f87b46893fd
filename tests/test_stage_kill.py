"""`kill -9` of `perfkit stage baseline` in the middle of its load: no server, Locust or kernel survives
it, and the next look at MLflow finds its run FAILED with the reason (nested runs: tests/test_processes.py);
`kill -9` of `perfkit stage quantization` while a scheme is timed: neither the forkserver nor its child survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import yaml

from perfkit import processes, tracking

from conftest import REPO
from test_processes import _wait_gone
from test_stage_runner import runs

def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_sigkill_of_the_stage_driver_leaves_no_process_and_a_failed_run(perfkit_root):
    (perfkit_root / "data" / "claims.yaml").symlink_to(REPO / "data" / "claims.yaml")
    params = yaml.safe_load((perfkit_root / "params.yaml").read_text())  # a load long enough to be killed in
    params["smoke"] |= {"load": {"users": 2, "requests": 100_000, "warmup_requests": 0, "duration_s": 600},
                        "baseline": {"cold_start_without_warmup": False}}
    (perfkit_root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    driver = subprocess.Popen([sys.executable, "-m", "perfkit", "stage", "baseline", "--smoke"], cwd=perfkit_root,
                              env=os.environ | {"PERFKIT_ROOT": str(perfkit_root)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        kinds: set[str] = set()
        while kinds != {"serve", "locust"} and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            lines = [" ".join(p.cmdline()) for p in _descendants(driver.pid) if p.is_running()]
            kinds = {k for k in ("serve", "locust") if any(f"perfkit {k}" in c or f"-m {k}" in c for c in lines)}
        assert kinds == {"serve", "locust"}, f"the stage never reached its load: {kinds}"
        started = [p.pid for p in _descendants(driver.pid)]
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert _wait_gone(started) == []
        assert processes.leftovers(perfkit_root) == []
    finally:
        if driver.poll() is None:
            driver.kill()
    assert [r.info.status for r in runs(perfkit_root, "baseline")] == ["RUNNING"]
    assert len(tracking.fail_abandoned_runs("baseline", perfkit_root)) == 1
    failed = runs(perfkit_root, "baseline")
    assert {r.info.status for r in failed} == {"FAILED"}
    assert all(str(driver.pid) in r.data.tags["perfkit.failed_reason"] for r in failed)


def test_sigkill_of_a_stage_timing_a_scheme_leaves_no_forkserver_or_child(perfkit_root):
    (perfkit_root / "data" / "claims.yaml").symlink_to(REPO / "data" / "claims.yaml")
    params = yaml.safe_load((perfkit_root / "params.yaml").read_text())  # a timing long enough to be killed in
    params["smoke"] |= {"measure": params["smoke"]["measure"] | {"max_duration_s": 600.0},
                        "quantization": params["smoke"]["quantization"] | {"repeats": 10_000, "schemes": ["fp32"]}}
    (perfkit_root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    driver = subprocess.Popen([sys.executable, "-m", "perfkit", "stage", "quantization", "--smoke"], cwd=perfkit_root,
                              env=os.environ | {"PERFKIT_ROOT": str(perfkit_root)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        timing: list[psutil.Process] = []
        while not timing and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            forkservers = [p for p in _descendants(driver.pid) if "multiprocessing.forkserver" in " ".join(p.cmdline())]
            timing = [c for f in forkservers for c in f.children()]
        assert timing, "the stage never forked a timing child"
        started = [p.pid for p in _descendants(driver.pid)]
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        left = _wait_gone(started)
        assert left == [], [(p, psutil.Process(p).cmdline()[:4], psutil.Process(p).ppid()) for p in left]
        assert processes.leftovers(perfkit_root) == []
    finally:
        if driver.poll() is None:
            driver.kill()
