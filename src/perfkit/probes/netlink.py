"""A real rate-limited link: two network namespaces joined by a veth pair, shaped by `tc tbf`.

Modelled transfer time (bytes / link speed) ignores TCP: slow start, acknowledgements, packet
framing. To check the model, the compression stage also sends the compressed bodies over a real
link on this machine. `ip netns add` creates two namespaces, a veth pair joins them with private
addresses that exist only inside them, and a token-bucket filter (`tc qdisc ... tbf rate R`) on
the sender's side caps the rate; `netem` (added delay) is not available here, so the link has
the rate but not the latency of a wide-area network. Needs root; without it the stage says the
link was skipped and why. The namespaces (and with them the veth pair) are always deleted.

Each end is a small Python process started inside its namespace (`ip netns exec`), so process
start-up is not timed: the sender times connect -> last byte acknowledged by the receiver, a few
times per body, and reports the median (one send can be delayed by another process on the core).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SENDER_IP, RECEIVER_IP, PORT = "10.203.0.1", "10.203.0.2", 5201


@dataclass(frozen=True)
class Link:
    sender_ns: str
    receiver_ns: str
    mbit: float


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@contextmanager
def shaped_link(mbit: float) -> Iterator[Link]:
    """Two fresh namespaces joined by a veth pair whose sender side is limited to `mbit` Mbit/s."""
    tag = f"pk{os.getpid()}"
    a, b = f"{tag}a", f"{tag}b"
    _ip("netns", "add", a)
    try:
        _ip("netns", "add", b)
        _ip("link", "add", f"{tag}va", "netns", a, "type", "veth", "peer", "name", f"{tag}vb", "netns", b)
        for ns, dev, addr in ((a, f"{tag}va", SENDER_IP), (b, f"{tag}vb", RECEIVER_IP)):
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        rate_bit = mbit * 1e6
        burst = max(3_000, int(rate_bit / 8 / 1000))  # 1 ms of traffic, at least two full packets: small bodies still queue
        _ip("netns", "exec", a, "tc", "qdisc", "add", "dev", f"{tag}va", "root", "tbf",
            "rate", f"{int(rate_bit)}bit", "burst", str(burst), "latency", "100ms")  # fmt: skip
        yield Link(a, b, mbit)
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def availability() -> str | None:
    """None if namespaces and tc can be used here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); this process is not root"
    try:
        with shaped_link(1.0):
            return None
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return f"could not build a shaped veth link: {detail.strip()}"


def transfer(link: Link, bodies: Sequence[bytes], timeout_s: float, repeats: int = 3) -> list[float]:
    """Median seconds over `repeats` sends of each body: connect to the receiver's acknowledgement of the last byte."""
    with tempfile.TemporaryDirectory(prefix="perfkit-netlink-") as tmp:
        files = []
        for i, body in enumerate(bodies):
            path = Path(tmp) / f"{i}.bin"
            path.write_bytes(body)
            files.append(str(path))
        me = [sys.executable, "-m", __name__]
        receiver = subprocess.Popen(
            ["ip", "netns", "exec", link.receiver_ns, *me, "recv", str(len(files) * repeats)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert receiver.stdout is not None
            if receiver.stdout.readline().strip() != "ready":
                raise RuntimeError("netlink receiver did not start")
            sent = subprocess.run(
                ["ip", "netns", "exec", link.sender_ns, *me, "send", str(repeats), *files],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=True,
            )
            return [float(s) for s in json.loads(sent.stdout.strip().splitlines()[-1])]
        finally:
            receiver.kill()
            receiver.wait(timeout=10)


def _recv(count: int) -> None:
    with socket.create_server((RECEIVER_IP, PORT)) as server:
        print("ready", flush=True)
        for _ in range(count):
            conn, _ = server.accept()
            with conn:
                total = 0
                while chunk := conn.recv(1 << 20):
                    total += len(chunk)
                conn.sendall(total.to_bytes(8, "big"))


def _send(repeats: int, paths: Sequence[str]) -> None:
    medians = []
    for path in paths:
        body = Path(path).read_bytes()
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            with socket.create_connection((RECEIVER_IP, PORT), timeout=60) as conn:
                conn.sendall(body)
                conn.shutdown(socket.SHUT_WR)
                ack = conn.recv(8)
            seconds.append(time.perf_counter() - t0)
            if int.from_bytes(ack, "big") != len(body):
                raise RuntimeError(f"receiver got {int.from_bytes(ack, 'big')} of {len(body)} bytes")
        medians.append(statistics.median(seconds))
    print(json.dumps(medians))


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        _recv(int(sys.argv[2]))
    else:
        _send(int(sys.argv[2]), sys.argv[3:])
