"""Starting and stopping the tensor-parallel ranks: torchrun, its process group, and failing fast.

The ranks are PyTorch's own distributed workers: `torchrun --standalone --nproc-per-node N -m
perfkit shard-bench ...` (torchrun is `python -m torch.distributed.run`). `--standalone` starts a
local rendezvous store; torchrun's store listens on all interfaces even with `--master-addr
127.0.0.1`, so a local run stays local only this way. Across machines the same command takes
`--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT` instead, with `GLOO_SOCKET_IFNAME` (or
`NCCL_SOCKET_IFNAME`) naming the interface the ranks talk over (README).

Failure has to end the run quickly and leave nothing behind:
- a rank that dies: torchrun (`--max-restarts 0`, polling every `--monitor-interval` 0.1 s) sees it,
  sends SIGTERM to the others and SIGKILL after `--shutdown-timeout`, and exits non-zero;
- a rank that hangs: the others block inside a collective until the process group's timeout
  (`sharding.collective_timeout_s`; gloo's default is 30 minutes), then raise, exit, and the above
  follows;
- anything else (torchrun itself stuck): `launch_timeout_s` on the whole tree.
torchrun is started in its own session and its process group is stopped by its id (SIGTERM, then
SIGKILL) whatever happened; torchrun puts each rank in a session of its own, so the ranks are
listed before and killed by pid if torchrun did not stop them. The ranks' entry point is wrapped in
torch.distributed.elastic's `@record`, so a failing rank writes its traceback to the error file
torchrun names (under `logs/` here), and `ShardLaunchError` quotes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from perfkit import processes
from perfkit.errors import PerfkitError

RESULT = "result.json"


class ShardLaunchError(PerfkitError, RuntimeError):
    """torchrun or a rank failed (or timed out); the message carries the failing rank's error."""


def backend_for(device: torch.device | str) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(device_type: str, local_rank: int) -> torch.device:
    """One GPU per rank (`cuda:<local rank>`); every CPU rank uses the CPU."""
    return torch.device(f"cuda:{local_rank}") if device_type == "cuda" else torch.device("cpu")


def init_process_group(device_type: str, timeout_s: float) -> tuple[int, int, torch.device]:
    """Join torchrun's process group (env://): returns (rank, world size, this rank's device)."""
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = rank_device(device_type, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout_s), device_id=device if device.type == "cuda" else None)
    return dist.get_rank(), dist.get_world_size(), device


def torchrun_command(nproc: int, args: Sequence[str], *, log_dir: Path, shutdown_timeout_s: float) -> list[str]:
    """The torchrun command line that starts `nproc` local ranks of `python -m perfkit <args>`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        "--monitor-interval=0.1",
        f"--shutdown-timeout={max(1, round(shutdown_timeout_s))}",
        f"--log-dir={log_dir}",
        "-m",
        "perfkit",
        *args,
    ]


@dataclass
class Torchrun:
    """A running torchrun: its process (the group leader), output folder and log."""

    process: subprocess.Popen
    out_dir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rank_errors(self) -> list[str]:
        """Each failed rank's message from the error files `@record` wrote (first line of each)."""
        errors = []
        for path in sorted((self.out_dir / "logs").rglob("error.json")):
            try:
                message = json.loads(path.read_text()).get("message", {})
            except (OSError, ValueError):
                continue
            text = message.get("message") if isinstance(message, dict) else str(message)
            if text:
                errors.append(f"{path.parent.name}: {text.strip().splitlines()[-1]}")
        return errors

    def failure(self, what: str) -> ShardLaunchError:
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-8:] if self.log_path.is_file() else []
        ranks = self.rank_errors()
        detail = "; ".join(ranks) if ranks else " | ".join(tail)
        return ShardLaunchError(f"{what}: {detail}")

    def wait(self, timeout_s: float) -> dict:
        """Wait for torchrun to end; the result rank 0 wrote, or ShardLaunchError."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise self.failure(f"torchrun did not finish within sharding.launch_timeout_s = {timeout_s:g} s") from None
        result = self.out_dir / RESULT
        if code != 0 or not result.is_file():
            raise self.failure(f"torchrun exited {code}")
        return json.loads(result.read_text())


def stop_group(pgid: int, grace_s: float = 3.0) -> None:
    """SIGTERM torchrun's process group, then SIGKILL whatever of it, and of its ranks, is left after `grace_s`.

    torchrun starts each rank in a session of its own, so the ranks are outside torchrun's group: they
    are listed first, and killed by pid if torchrun could not stop them itself.
    """
    import psutil

    try:
        ranks = psutil.Process(pgid).children(recursive=True)
    except psutil.Error:
        ranks = []
    try:
        os.killpg(pgid, signal.SIGTERM)  # torchrun stops its ranks on SIGTERM
    except ProcessLookupError:
        pass
    _, alive = psutil.wait_procs(ranks, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def start(
    nproc: int, args: Sequence[str], out_dir: Path, *, shutdown_timeout_s: float = 2.0, env: dict[str, str] | None = None
) -> Iterator[Torchrun]:
    """Start torchrun in its own session; on exit its whole process group is stopped, whatever happened."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "torchrun.log"
    command = torchrun_command(nproc, [*args, "--out", str(out_dir)], log_dir=out_dir / "logs", shutdown_timeout_s=shutdown_timeout_s)
    with log_path.open("wb") as log:
        process = processes.spawn(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        yield Torchrun(process, out_dir, log_path)
    finally:
        stop_group(process.pid)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def run(
    nproc: int, args: Sequence[str], out_dir: Path, *, timeout_s: float, shutdown_timeout_s: float = 2.0, env: dict[str, str] | None = None
) -> dict:
    """torchrun `nproc` ranks of `perfkit <args>` to the end; rank 0's result, or ShardLaunchError."""
    with start(nproc, args, out_dir, shutdown_timeout_s=shutdown_timeout_s, env=env) as handle:
        return handle.wait(timeout_s)
