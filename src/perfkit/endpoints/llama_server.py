"""llama.cpp's C++ `llama-server`: a second real engine, serving the GGUF the default model comes from.

`make llama-server` builds it from the llama.cpp source that PyPI's `llama-cpp-python` sdist
bundles (native to this CPU, ~10 CPU-minutes; kept out of `make setup`, CI and `make test`) and
converts the default checkpoint to an F32 GGUF with llama.cpp's own `convert_hf_to_gguf.py`, so
that the comparison has a same-precision figure beside the shipped Q4_1 file. The Python
package's own server is not used: it serializes requests behind a global lock, interrupts
concurrent ones with empty 200 answers and has no /health; the C++ server has /health, /metrics,
usage in the stream and continuous batching over `--parallel` slots.

`launch(gguf, parallel=, threads=)` starts it through `processes.spawn` (it dies with the process
that started it), waits for /health, and always stops it; what it yields is an `Endpoint`
(`/v1/models` lists `alias`; it takes `ignore_eos`, so every answer has the length asked for).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from perfkit import processes
from perfkit.endpoints.base import ChatRequest, Completion, EndpointFacts
from perfkit.endpoints.chat import complete_over_http
from perfkit.errors import PerfkitError

BUILD_DIR = Path(".cache") / "llama.cpp"  # relative to the project root: where `make llama-server` builds
BINARY_ENV = "PERFKIT_LLAMA_SERVER"  # a llama-server binary elsewhere
F32_GGUF = "smollm2-135m-instruct-f32.gguf"


class LlamaServerError(PerfkitError, RuntimeError):
    """llama-server is missing or did not become ready; the message ends with its log's tail."""


def binary(root: Path) -> Path | None:
    """The llama-server to run: $PERFKIT_LLAMA_SERVER, else `make llama-server`'s build, else one on PATH."""
    for candidate in (os.environ.get(BINARY_ENV), root / BUILD_DIR / "build" / "bin" / "llama-server", shutil.which("llama-server")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def f32_gguf(root: Path) -> Path:
    """The default checkpoint as an F32 GGUF (`make llama-server` writes it)."""
    return root / BUILD_DIR / F32_GGUF


@dataclass(frozen=True)
class LlamaServer:
    """A running llama-server: an `Endpoint` whose process perfkit started (no cold start is measured)."""

    base_url: str
    pid: int
    gguf: Path
    parallel: int
    threads: int
    alias: str
    log_path: Path
    kv_type: str = "f16"
    timeout_s: float = 600.0
    start = None  # its start is not probed

    @property
    def facts(self) -> EndpointFacts:
        engine = f"llama.cpp llama-server ({self.gguf.name}, {self.parallel} slot{'s' * (self.parallel > 1)}, KV {self.kv_type})"
        return EndpointFacts("llama-server", engine, self.alias, (self.alias,), self.base_url, True, True)

    def complete(self, request: ChatRequest) -> Completion:
        return complete_over_http(self.base_url, self.alias, request, fixed_length=True, timeout_s=self.timeout_s)


def command(
    exe: Path,
    gguf: Path,
    port: int,
    *,
    parallel: int,
    threads: int,
    ctx_per_slot: int,
    alias: str,
    kv_type: str = "f16",
    cache_prompt: bool = True,
) -> list[str]:
    """The llama-server command line: loopback only, `parallel` slots sharing a context of `ctx_per_slot` each, keys
    and values cached as `kv_type` (llama.cpp's default f16; f32 to compare with an fp32 engine at equal precision);
    `cache_prompt=False` stops a slot reusing the prompt prefix it holds from its last request (a chat template's
    system turn), which an engine without prefix reuse cannot do."""
    return [
        str(exe),
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--alias",
        alias,
        "--threads",
        str(threads),
        "--threads-batch",
        str(threads),
        "--parallel",
        str(parallel),
        "--ctx-size",
        str(ctx_per_slot * parallel),
        "--cont-batching",
        "--cache-type-k",
        kv_type,
        "--cache-type-v",
        kv_type,
        "--metrics",
        "--no-webui",
        "--cache-prompt" if cache_prompt else "--no-cache-prompt",
    ]


@contextmanager
def launch(
    root: Path,
    gguf: Path,
    *,
    parallel: int = 1,
    threads: int = 2,
    ctx_per_slot: int = 1024,
    alias: str = "smollm2-135m-instruct",
    log_dir: Path | None = None,
    timeout_s: float = 120.0,
    kv_type: str = "f16",
    cache_prompt: bool = True,
    exe: Path | None = None,
) -> Iterator[LlamaServer]:
    """llama-server (`exe`, else `binary(root)`) on `gguf`, ready; always stopped."""
    exe = exe or binary(root)
    if exe is None:
        raise LlamaServerError(f"no llama-server binary: run `make llama-server` or set {BINARY_ENV}")
    if not gguf.is_file():
        raise LlamaServerError(f"{gguf}: GGUF file not found (`make llama-server` converts the default model)")
    port = processes.free_port()
    log_dir = log_dir or root / BUILD_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"llama-server-{port}.log"
    cmd = command(
        exe,
        gguf,
        port,
        parallel=parallel,
        threads=threads,
        ctx_per_slot=ctx_per_slot,
        alias=alias,
        kv_type=kv_type,
        cache_prompt=cache_prompt,
    )
    with log_path.open("wb") as log:
        proc = processes.spawn(cmd, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_ready(proc, f"{base_url}/health", timeout_s, log_path, LlamaServerError, "llama-server")
        yield LlamaServer(base_url, proc.pid, gguf, parallel, threads, alias, log_path, kv_type)
    finally:
        processes.stop(proc)
