"""`kill -9` of a stage driver in the middle of a load: no server, Locust or kernel survives it, and the
next look at MLflow finds its runs FAILED with the reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from perfkit import processes, tracking

from test_processes import _wait_gone
from test_stage_runner import runs, write_notebook

UNDER_LOAD = """
import mlflow
from pathlib import Path
from tempfile import mkdtemp
import perfkit.config, perfkit.tracking
from perfkit.load.runner import run_load, served_prompts
from perfkit.serving.launch import launch
cfg = perfkit.config.load(stage, smoke=smoke)
run = perfkit.tracking.start(cfg)
variant = mlflow.start_run(run_name="variant", nested=True, experiment_id=run.info.experiment_id)
with variant, launch(cfg, warmup=False, probe_cold_start=False) as server:
    run_load(cfg, server.base_url, served_prompts(cfg), Path(mkdtemp()), requests=100_000, duration_s=600)
"""


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_sigkill_of_the_stage_driver_leaves_no_process_and_a_failed_run(perfkit_root):
    write_notebook(perfkit_root / "notebooks" / "probe.ipynb", UNDER_LOAD)
    driver = subprocess.Popen([sys.executable, "-m", "perfkit", "stage", "probe", "--smoke"], cwd=perfkit_root,
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
    assert [r.info.status for r in runs(perfkit_root, "probe")] == ["RUNNING", "RUNNING"]
    assert len(tracking.fail_abandoned_runs("probe", perfkit_root)) == 2
    failed = runs(perfkit_root, "probe")
    assert {r.info.status for r in failed} == {"FAILED"}
    assert all(str(driver.pid) in r.data.tags["perfkit.failed_reason"] for r in failed)
