"""Payload throughput under concurrency: Locust with `grpc_locustfile.py`, in its own process.

`perfkit.load.runner` drives the chat-completion locustfile; the transport stage needs a different
workload (one payload fetched again and again, over REST or gRPC), so this module hands that file
and a JSON spec to the same process handling (`runner.run_locust`: bounded, always stopped, CPU
sampled) and summarizes the rows the same way every load run does.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from perfkit.config import Config
from perfkit.load.results import LoadSummary, summarize
from perfkit.load.runner import GRACE_S, locust_command, run_locust

LOCUSTFILE = Path(__file__).with_name("grpc_locustfile.py")


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
    spec = {
        "kind": t.load_kind,
        "size_bytes": size_kb * 1024,
        "encoding_format": t.load_rest_encoding,
        "target": f"127.0.0.1:{port}",
        "max_message_bytes": t.grpc_max_message_bytes,
        "warmup_requests": t.load_users,
        "timeout_s": 120,
    }
    user = "GrpcPayloadUser" if protocol == "grpc" else "RestPayloadUser"
    args = [
        "--headless",
        "--host",
        f"http://127.0.0.1:{port}",
        "-u",
        str(t.load_users),
        "-r",
        str(t.load_users),
        "-t",
        f"{math.ceil(t.load_duration_s)}s",
        "--stop-timeout",
        "10",
        "--only-summary",
        "--loglevel",
        "WARNING",
        user,
    ]
    with tempfile.TemporaryDirectory(prefix="perfkit-transport-load-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec | {"timings_dir": tmp}))
        timings, client_cpu_pct, _ = run_locust(
            [locust_command(*args, locustfile=LOCUSTFILE)], spec_path, t.load_duration_s + GRACE_S, cfg.hardware.sample_interval_s
        )
    summary = summarize(timings, mode="closed", users=t.load_users, client_cpu_pct=client_cpu_pct)
    return LoadCell(protocol, size_kb, summary)
