"""Payload throughput under concurrency: Locust with `grpc_locustfile.py`, in its own process.

`perfkit.load.runner` drives the chat-completion locustfile; the transport stage needs a different
workload (one payload fetched again and again, over REST or gRPC), so this module starts Locust
with that file and a JSON spec, bounded by `-t` and a hard timeout that kills its process group,
and reads the per-request rows back through `perfkit.load.results`, the same summary (closed loop,
Little's law, the generator's own CPU share) every load run reports.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from perfkit.config import Config
from perfkit.hardware import ResourceSampler
from perfkit.load.results import LoadSummary, read_timings, summarize

LOCUSTFILE = Path(__file__).with_name("grpc_locustfile.py")
LOCUST_GRACE_S = 30.0


def size_label(kb: int) -> str:
    return f"{kb // 1024}MB" if kb >= 1024 and kb % 1024 == 0 else f"{kb}KB"


@dataclass(frozen=True)
class LoadCell:
    protocol: str
    size_kb: int
    summary: LoadSummary

    @property
    def variant(self) -> str:
        return f"load-{self.protocol}-{size_label(self.size_kb)}"


def run_payload_load(cfg: Config, protocol: str, port: int, size_kb: int) -> LoadCell:
    """N closed-loop users fetching one payload size from the server on `port` for `transport.load_duration_s`."""
    t = cfg.transport
    spec = {"kind": t.load_kind, "size_bytes": size_kb * 1024, "encoding_format": t.load_rest_encoding,
            "target": f"127.0.0.1:{port}", "max_message_bytes": t.grpc_max_message_bytes,
            "warmup_requests": t.load_users, "timeout_s": 120}
    user = "GrpcPayloadUser" if protocol == "grpc" else "RestPayloadUser"
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--skip-log-setup",
           "--host", f"http://127.0.0.1:{port}", "-u", str(t.load_users), "-r", str(t.load_users),
           "-t", f"{math.ceil(t.load_duration_s)}s", "--stop-timeout", "10", "--only-summary",
           "--loglevel", "WARNING", user]
    with tempfile.TemporaryDirectory(prefix="perfkit-transport-load-") as tmp:
        folder = Path(tmp)
        (folder / "spec.json").write_text(json.dumps(spec | {"timings_dir": tmp}))
        env = os.environ | {"PERFKIT_LOAD_SPEC": str(folder / "spec.json"), "PYTHONUNBUFFERED": "1"}
        with (folder / "locust.log").open("w") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
            with ResourceSampler(proc.pid, cfg.hardware.sample_interval_s) as sampler:
                try:
                    proc.wait(timeout=t.load_duration_s + LOCUST_GRACE_S)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        timings = read_timings(sorted(folder.glob("timings-*.jsonl")))
        if not timings:
            raise RuntimeError(f"Locust recorded no requests: {(folder / 'locust.log').read_text()[-2000:]}")
    summary = summarize(timings, mode="closed", users=t.load_users, client_cpu_pct=sampler.usage.cpu_util_pct)
    return LoadCell(protocol, size_kb, summary)
