"""Start a perfkit server in its own process, measure how long it takes to be useful, and always stop it.

Three durations, all on this process's clock from the moment of spawn (docs/design.md §2, rule 9):

- `load_s`: model load time as the server measured it (weights + tokenizer + embedding model);
- `ready_s`: spawn -> the server answers its health check (`/health` 200 or the `Health` RPC),
  which includes interpreter start, imports, load and, if `serving.warmup`, one warm-up generation;
- `cold_start_s`: spawn -> the first successful completion a client gets. Without warm-up the
  first request also pays lazy initialisation, which is what preloading + warm-up (claim C19) buys;
- `imports_s` and `warmup_s`, which split the cold start: spawn -> the server's modules imported
  (interpreter start included; wall clocks of two processes), and the warm-up generation.

The server is started by `processes.spawn` (its own session, and SIGTERM from the kernel when
the process that started it dies, however it dies) and stopped by `processes.stop` (SIGTERM to its
process group, then SIGKILL after a grace period), on success, on error and on a failed start,
when the log's tail is raised with the error. The server binds port 0 and tells the launcher its
port through a small JSON file written once it is ready: `{"port": N, "load_s": S, ...}`
and its start-up figures (`write_port_file`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from perfkit import config
from perfkit.config import Config
from perfkit.endpoints.base import ChatRequest, Completion, EndpointFacts
from perfkit.endpoints.chat import complete_over_http, grpc_chat
from perfkit.errors import PerfkitError
from perfkit.hardware import now
from perfkit.processes import spawn, stop
from perfkit.provenance import engine_form
from perfkit.serving.checkpoint import prepare_checkpoint

# The load stages measure latency under load, not load shedding: every request of a closed-loop test queues
# until served (the 503 bound would otherwise turn a slow machine's queue into errors; bench/overload.py tests it).
QUEUE_ALL = {"serving.max_queue_wait_s": 3600.0}
POLL_S = 0.05
PROBE_PROMPT = "Hello"


class LaunchError(PerfkitError, RuntimeError):
    """The server did not become ready; the message ends with the tail of its log."""


@dataclass(frozen=True)
class ServerHandle:
    """A perfkit server this process started: an `Endpoint` whose process and start-up are measured."""

    protocol: str  # "rest" | "grpc"
    host: str
    port: int
    pid: int
    base_url: str  # "http://127.0.0.1:PORT" (rest) or "127.0.0.1:PORT" (grpc)
    log_path: Path
    load_s: float  # model load time, as the server measured it
    ready_s: float  # spawn -> /health 200 (rest) / Health RPC (grpc)
    cold_start_s: float | None  # spawn -> first successful completion (None if not probed)
    imports_s: float | None = None  # spawn -> the server's modules imported (None: the server did not say)
    warmup_s: float = 0.0  # the warm-up generation (0 without warm-up)
    facts: EndpointFacts | None = None  # None only for a handle built outside `launch`
    grpc_max_message_bytes: int = 4 * 1024 * 1024
    timeout_s: float = 600.0

    @property
    def start(self) -> ColdStart | None:
        """Its start, when the launcher probed it and the server said when its imports ended."""
        return ColdStart.from_handle(self) if self.cold_start_s is not None and self.imports_s is not None else None

    def complete(self, request: ChatRequest) -> Completion:
        if self.protocol == "grpc":
            return grpc_chat(self.base_url, request, self.grpc_max_message_bytes, self.timeout_s)
        assert self.facts is not None
        return complete_over_http(self.base_url, self.facts.model, request, fixed_length=True, timeout_s=self.timeout_s)


@dataclass(frozen=True)
class ColdStart:
    """One fresh server's start, spawn -> first answer, and its parts (seconds on the launcher's clock)."""

    imports_s: float  # interpreter start and perfkit's imports
    model_load_s: float
    warmup_s: float
    ready_s: float  # spawn -> ready
    cold_start_s: float  # spawn -> first answer

    @property
    def first_answer_s(self) -> float:
        """Ready -> first answer: what preloading and warm-up (C19) are meant to cut."""
        return self.cold_start_s - self.ready_s

    @property
    def other_s(self) -> float:
        """Ready minus imports, load and warm-up: scheduler and HTTP server start, the health check."""
        return self.ready_s - self.imports_s - self.model_load_s - self.warmup_s

    @classmethod
    def from_handle(cls, handle: ServerHandle) -> ColdStart:
        if handle.cold_start_s is None or handle.imports_s is None:
            raise ValueError("the launcher did not probe the cold start, or the server did not report its imports")
        return cls(handle.imports_s, handle.load_s, handle.warmup_s, handle.ready_s, handle.cold_start_s)

    def row(self) -> dict[str, float]:
        """Every part, the derived ones included."""
        return {
            "imports_s": self.imports_s, "model_load_s": self.model_load_s, "warmup_s": self.warmup_s, "other_s": self.other_s,
            "ready_s": self.ready_s, "first_answer_s": self.first_answer_s, "cold_start_s": self.cold_start_s,
        }  # fmt: skip


def server_engine(served: Config) -> str:
    """The reference server's form, in words: scheduler, precision, KV cache and compilation."""
    s = served.serving
    return f"perfkit reference server ({s.scheduler} scheduler, {s.dtype}, {engine_form(s.kv_cache, s.compile, served.hardware.prepack)})"


def write_port_file(path: Path, port: int, startup: Mapping[str, float]) -> None:
    """Atomically tell the launcher the server is ready on `port`, with its start-up figures (`load_s`, `warmup_s`,
    `imported_at`: wall-clock time); a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"port": port} | dict(startup)))
    os.replace(tmp, path)


def serve_command(protocol: str, port_file: Path, config_file: Path) -> list[str]:
    """The server's command line: it runs with the resolved config in `config_file`, never re-reading params.yaml."""
    cmd = [sys.executable, "-m", "perfkit", "serve", "--protocol", protocol, "--host", "127.0.0.1", "--port", "0"]
    return cmd + ["--port-file", str(port_file), "--config", str(config_file)]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_port_file(proc: subprocess.Popen[bytes], port_file: Path, deadline: float, log_path: Path) -> dict[str, Any]:
    while True:
        if port_file.is_file():
            return dict(json.loads(port_file.read_text()))
        if proc.poll() is not None:
            raise LaunchError(f"server exited with code {proc.returncode} before it was ready:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise LaunchError(f"server not ready after the timeout:\n{log_tail(log_path)}")
        time.sleep(POLL_S)


def _rest_ready(base_url: str) -> None:
    r = httpx.get(f"{base_url}/health", timeout=10)
    if r.status_code != 200:
        raise LaunchError(f"/health answered {r.status_code} after the server said it was ready")


def _rest_probe(base_url: str, cfg: Config, timeout_s: float) -> None:
    body = {"model": cfg.model.name, "prompt": PROBE_PROMPT, "max_tokens": 1}
    r = httpx.post(f"{base_url}/v1/completions", json=body, timeout=timeout_s)
    if r.status_code != 200:
        raise LaunchError(f"the cold-start completion answered {r.status_code}: {r.text[:500]}")


def _grpc_ready(address: str, timeout_s: float) -> None:
    import grpc

    from perfkit.serving import perfkit_pb2 as pb
    from perfkit.serving import perfkit_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.PerfkitStub(channel).Health(pb.HealthRequest(), timeout=timeout_s, wait_for_ready=True)
    if reply.status != "ok":
        raise LaunchError(f"Health RPC answered {reply.status!r}")


def _grpc_probe(address: str, timeout_s: float) -> None:
    import grpc

    from perfkit.serving import perfkit_pb2 as pb
    from perfkit.serving import perfkit_pb2_grpc as pb_grpc

    request = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=PROBE_PROMPT)], max_tokens=1)
    with grpc.insecure_channel(address) as channel:
        pb_grpc.PerfkitStub(channel).Generate(request, timeout=timeout_s)


@contextmanager
def launch(
    cfg: Config,
    *,
    protocol: str = "rest",
    overrides: Mapping[str, Any] | None = None,
    warmup: bool | None = None,
    probe_cold_start: bool = True,
    timeout_s: float = 180,
) -> Iterator[ServerHandle]:
    """Start `python -m perfkit serve` for `cfg` (same root, smoke mode and `overrides`), yield its handle, stop it.

    `overrides` are dotted params keys (`{"serving.scheduler": "dynamic"}`), validated by the server
    like params.yaml; `warmup` overrides `serving.warmup`. Raises LaunchError with the log's tail
    when the server exits or is not ready within `timeout_s`.
    """
    if protocol not in ("rest", "grpc"):
        raise ValueError(f"protocol = {protocol!r}; allowed: rest, grpc")
    sets = dict(overrides or {})
    if warmup is not None:
        sets["serving.warmup"] = warmup
    logs = cfg.out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="perfkit-serve-"))
    port_file = workdir / "port.json"
    env = {**os.environ, "PERFKIT_ROOT": str(cfg.root), "TOKENIZERS_PARALLELISM": "false"}
    config_file = workdir / "config.json"
    served = config.override(cfg, sets)  # a bad override fails here, before a spawn
    config_file.write_text(config.to_json(served))
    prepare_checkpoint(served)  # a copy in the served precision, if asked for: made before the clock starts
    cmd = serve_command(protocol, port_file, config_file)
    log_path = logs / f"server-{protocol}-{int(time.time() * 1000)}.log"
    with log_path.open("wb") as log:
        spawned, spawned_wall = now(), time.time()
        proc = spawn(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cfg.root)
    try:
        deadline = time.monotonic() + timeout_s
        info = _wait_port_file(proc, port_file, deadline, log_path)
        port = int(info["port"])
        base_url = f"http://127.0.0.1:{port}" if protocol == "rest" else f"127.0.0.1:{port}"
        try:
            if protocol == "rest":
                _rest_ready(base_url)
            else:
                _grpc_ready(base_url, max(1.0, deadline - time.monotonic()))
            ready_s = now() - spawned
            cold_start_s = None
            if probe_cold_start:
                if protocol == "rest":
                    _rest_probe(base_url, cfg, max(1.0, deadline - time.monotonic()))
                else:
                    _grpc_probe(base_url, max(1.0, deadline - time.monotonic()))
                cold_start_s = now() - spawned
        except LaunchError as exc:
            raise LaunchError(f"{exc}\n{log_tail(log_path)}") from None
        except Exception as exc:
            raise LaunchError(f"server not usable: {exc!r}\n{log_tail(log_path)}") from exc
        imports_s = float(info["imported_at"]) - spawned_wall if "imported_at" in info else None
        facts = EndpointFacts("perfkit", server_engine(served), cfg.model.name, (cfg.model.name,), base_url, True, True)
        yield ServerHandle(
            protocol,
            "127.0.0.1",
            port,
            proc.pid,
            base_url,
            log_path,
            float(info["load_s"]),
            ready_s,
            cold_start_s,
            imports_s,
            float(info.get("warmup_s", 0.0)),
            facts,
            served.transport.grpc_max_message_bytes,
        )
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
