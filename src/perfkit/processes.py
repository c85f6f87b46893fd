"""Child processes that cannot outlive their stage, and a machine quiet enough to measure on.

No orphans. A stage killed with `kill -9` (as the OOM killer does) runs no cleanup: its
`finally` blocks and signal handlers never run, and a process-group kill needs someone alive to
send it. So every process perfkit starts (`spawn`) asks the kernel, between fork and exec, to
send it SIGTERM when its parent dies (`prctl(PR_SET_PDEATHSIG)`, which survives exec), and exits
at once if the parent died before it asked. The trap: Linux sends the signal when the *thread*
that forked the child exits, not the process, so spawn from the main thread or from a thread that
outlives the child. Each child also gets its own session, so `stop` can end it and anything it
started with one signal to its process group (SIGTERM, then SIGKILL after a grace period). The
notebook kernel is started by papermill, which takes no spawn hook; ipykernel exits by itself
within seconds when its parent dies, and the servers and Locust it started then follow it.

Quiet machine. Before measuring, `preflight` looks for perfkit processes of this checkout (the
same `PERFKIT_ROOT`; other checkouts may run servers on the same machine) that are not this
process, its ancestors or its descendants: leftovers of an earlier run, which would share the
cores with the measurement. It then samples /proc/stat over `QUIET_SAMPLE_S` for how many cores
are busy -- the 1-minute load average decays too slowly (after a busy stage it needs ~40 s to fall
below 1.0 on 2 cores) -- and compares it with `measure.max_load`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from perfkit.errors import PerfkitError

# The variable through which a stage hands its MLflow run to the processes it starts (mlflow's own name for
# it). A measuring child must not inherit it. Here, not in perfkit.tracking, so that such a child need not
# import MLflow to drop it.
RUN_ID_ENV = "MLFLOW_RUN_ID"

log = logging.getLogger("perfkit.processes")
PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 10.0
QUIET_SAMPLE_S = 2.0
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)  # loaded before any fork


class NotQuiet(PerfkitError, RuntimeError):
    """Leftover perfkit processes or a busy machine: a measurement now would not be of perfkit alone."""


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn`: the child gets `sig` when the thread that forked it dies (or exits if it already has)."""

    def arm() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died between fork and prctl: no signal would ever come
            os._exit(1)

    return arm


def exit_when_gone(pid: int) -> None:
    """End this process as soon as process `pid` ends, however it ends (`kill -9` included).

    For a child whose parent is not the process it must die with: one forked by a forkserver has the
    forkserver as its parent, and the forkserver outlives a killed stage while any child it forked still
    holds its liveness pipe. A daemon thread waits on `pid`'s pidfd and takes no CPU while it waits.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # already gone
        os._exit(1)

    def wait() -> None:
        select.select([fd], [], [])
        os._exit(1)

    threading.Thread(target=wait, name=f"perfkit-exit-with-{pid}", daemon=True).start()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (a child binds it next; a race with another binder is possible, not likely)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float, log_path: Path, error: type[Exception], name: str) -> None:
    """Poll `url` until it answers 200; raise `error` with the log's tail if `proc` exits or `timeout_s` passes."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise error(f"{name} exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise error(f"{name} not ready after {timeout_s:g} s:\n{_tail(log_path)}")
        time.sleep(0.1)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def spawn(cmd: Sequence[str], **popen: Any) -> subprocess.Popen:
    """`subprocess.Popen(cmd, **popen)` in its own session, tied to this process's life (see the module doc)."""
    return subprocess.Popen(list(cmd), start_new_session=True, preexec_fn=die_with_parent(os.getpid()), **popen)


def set_group_nice(pid: int, nice: int) -> bool:
    """Give the scheduling group of `pid`'s session the priority `nice`; False where the kernel has no such group.

    `spawn` starts each child in its own session, and with the kernel's autogroup scheduling on, CPU time is shared
    between sessions' groups first: a thread's own nice then orders it only within its group. Measured on a 2-core
    EPYC: a nice-10 busy loop in its own session got 50% of a core shared with a nice-0 one, 10% from the same
    session, and 10% again once its group's nice was set here (docs/runs.md)."""
    path = Path(f"/proc/{pid}/autogroup")
    try:
        path.write_text(str(nice))
    except OSError:  # no autogroup in this kernel, or not ours to set
        return False
    return True


def stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM the child's process group, SIGKILL it after `grace_s`; returns the exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return int(proc.returncode)


def process_started(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), or None when no such process lives."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def leftovers(root: Path) -> list[psutil.Process]:
    """Live perfkit processes of the checkout at `root`, other than this one, its ancestors and descendants."""
    me = psutil.Process()
    mine = {me.pid, *(p.pid for p in me.parents()), *(p.pid for p in me.children(recursive=True))}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.info["pid"] in mine or "perfkit" not in " ".join(proc.info["cmdline"] or ()):
            continue
        try:
            same_root = proc.environ().get("PERFKIT_ROOT") == str(root)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if same_root:
            found.append(proc)
    return found


def busy_cpu_s() -> float:
    """CPU seconds every process on the machine has used so far (all cores; idle and I/O wait excluded)."""
    t = psutil.cpu_times()
    guest = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)  # already inside user / nice
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - guest


def busy_cores(sample_s: float = QUIET_SAMPLE_S) -> float:
    """Cores busy on average over the next `sample_s` seconds (all processes)."""
    busy0, wall0 = busy_cpu_s(), time.monotonic()
    time.sleep(sample_s)
    busy1, wall1 = busy_cpu_s(), time.monotonic()
    cores = os.cpu_count() or 1
    return 0.0 if wall1 <= wall0 else min(float(cores), max(0.0, (busy1 - busy0) / (wall1 - wall0)))  # tick rounding


def preflight(root: Path, max_load: float, *, refuse: bool) -> tuple[list[str], float]:
    """Check for leftovers and a busy machine; raise NotQuiet when `refuse`, else return the findings as flags
    and the cores found busy (the stage's provenance keeps the figure)."""
    flags = []
    left = leftovers(root)
    if left:
        names = ", ".join(f"{p.pid} ({' '.join(p.info['cmdline'][:4])})" for p in left[:5])
        flags.append(f"perfkit processes of this checkout from an earlier run are alive: {names}")
    busy = busy_cores()
    if busy > max_load:
        flags.append(f"{busy:.2f} cores busy over {QUIET_SAMPLE_S:g} s before measuring (measure.max_load = {max_load:g})")
    if flags and refuse:
        raise NotQuiet("; ".join(flags) + " -- stop them or wait, then rerun (smoke runs and CI only flag this)")
    for flag in flags:
        log.warning("preflight: %s", flag)
    return flags, busy
