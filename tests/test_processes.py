"""No orphans and a quiet machine: children die with their parent, however it dies; abandoned MLflow
runs are marked FAILED; leftovers of an earlier run are found before measuring."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from perfkit import processes, tracking

WAIT_S = 30.0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids, limit_s: float = WAIT_S) -> list[int]:
    """The pids still alive once all are gone or `limit_s` has passed (a bound, not a timing)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def _orphan_after_sigkill(start_child: str) -> int:
    """Run a parent that starts a `sleep` child with `start_child` (an expression giving a Popen), SIGKILL
    the parent, return the child's pid."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, time; from perfkit.processes import spawn; print(({start_child}).pid, flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()  # SIGKILL: no cleanup code of the parent runs
    parent.wait()
    return child


def test_a_spawned_child_dies_when_its_parent_is_killed_with_sigkill():
    assert _wait_gone([_orphan_after_sigkill("spawn(['sleep', '120'])")]) == []


def test_without_the_death_signal_the_same_child_would_outlive_its_parent():
    """The control: a plain Popen child survives its parent's SIGKILL (what `spawn` prevents)."""
    child = _orphan_after_sigkill("subprocess.Popen(['sleep', '120'], start_new_session=True)")
    try:
        assert _wait_gone([child], limit_s=2.0) == [child]
    finally:
        os.kill(child, signal.SIGKILL)


def test_stop_ends_the_whole_process_group():
    proc = processes.spawn(
        [sys.executable, "-c", "import subprocess, time; print(subprocess.Popen(['sleep', '120']).pid, flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    grandchild = int(proc.stdout.readline())
    assert processes.stop(proc, grace_s=5) != 0
    assert _wait_gone([proc.pid, grandchild]) == []


def test_leftover_of_this_checkout_is_found_and_refused(tmp_path):
    # A perfkit-named process of this root that is not our descendant: its launcher exits at once.
    script = "import time; time.sleep(120)  # perfkit leftover"
    quiet = "start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL"
    launcher = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', {script!r}, 'perfkit'], {quiet}).pid)",
        ],
        capture_output=True,
        text=True,
        env=os.environ | {"PERFKIT_ROOT": str(tmp_path)},
        check=True,
    )
    orphan = int(launcher.stdout.strip())
    try:
        assert orphan in [p.pid for p in processes.leftovers(tmp_path)]
        assert processes.leftovers(tmp_path / "other-checkout") == []
        with pytest.raises(processes.NotQuiet, match=str(orphan)):
            processes.preflight(tmp_path, max_load=4096, refuse=True)
        flags, busy = processes.preflight(tmp_path, max_load=4096, refuse=False)
        assert len(flags) == 1 and str(orphan) in flags[0] and busy >= 0.0
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_a_busy_machine_is_refused_by_max_load(tmp_path):
    busy = processes.busy_cores(0.5)
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one core busy for sure, whatever else runs
    try:
        with pytest.raises(processes.NotQuiet, match="measure.max_load"):
            processes.preflight(tmp_path, max_load=0.5, refuse=True)
    finally:
        spinner.kill()
        spinner.wait()


def test_runs_of_a_dead_process_are_marked_failed_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dead = subprocess.Popen(["true"])
    dead.wait()
    c = tracking.client(tmp_path)
    exp = tracking.experiment_id("demo", tmp_path)
    gone = dict(tracking.owner_tags(), **{"perfkit.pid": str(dead.pid)})
    abandoned = c.create_run(exp, tags=gone).info.run_id
    nested = c.create_run(exp, tags={"mlflow.parentRunId": abandoned}).info.run_id
    live = c.create_run(exp, tags=tracking.owner_tags()).info.run_id
    live_nested = c.create_run(exp, tags={"mlflow.parentRunId": live}).info.run_id
    assert sorted(tracking.fail_abandoned_runs("demo", tmp_path)) == sorted([abandoned, nested])
    for run_id in (abandoned, nested):
        run = c.get_run(run_id)
        assert run.info.status == "FAILED" and str(dead.pid) in run.data.tags["perfkit.failed_reason"]
    assert {c.get_run(r).info.status for r in (live, live_nested)} == {"RUNNING"}


@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"), reason="this kernel has no autogroup scheduling")
def test_a_child_in_its_own_session_gets_its_groups_priority_set():
    child = processes.spawn([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        before = open(f"/proc/{child.pid}/autogroup").read()
        assert before.rstrip().endswith("nice 0")  # its own group, at the default priority: its nice alone would not count
        assert processes.set_group_nice(child.pid, 10)
        assert open(f"/proc/{child.pid}/autogroup").read().rstrip().endswith("nice 10")
    finally:
        processes.stop(child)
    assert not processes.set_group_nice(child.pid, 10)  # gone: no group to set
