"""Bytes on the wire, read from the kernel's TCP counters rather than estimated from message sizes.

Linux keeps per-connection counters (`tcpi_bytes_acked`, `tcpi_bytes_received` in TCP_INFO) that
count every payload byte TCP carried: HTTP headers, chunked-encoding lines, HTTP/2 frames, gRPC's
5-byte message prefix, pings and window updates included; IP and TCP headers excluded. `ss -tni`
prints them for each socket. A client that keeps its connections open (an httpx client with
keep-alive, a gRPC channel) is measured by reading its sockets' counters before and after a series
of requests: the difference, divided by the requests, is the bytes one request costs on the wire.

On loopback every connection appears twice (client and server side); the client's sockets are the
ones whose peer port is the server's port. A connection that closes between the two readings takes
its counters with it, so `WireCount.closed` reports how many did: a non-zero value means the count
is low.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

_COUNTER = re.compile(r"\b(bytes_acked|bytes_received):(\d+)")


@dataclass(frozen=True)
class TcpBytes:
    """One connection's payload bytes so far: sent (acknowledged by the peer) and received."""

    sent: int
    received: int


def client_connections(port: int, host: str = "127.0.0.1") -> dict[str, TcpBytes]:
    """Established client-side TCP connections to `host:port`, keyed by local address, with their counters."""
    ss = shutil.which("ss")
    if ss is None:
        raise RuntimeError("`ss` (iproute2) is needed to read TCP counters: apt-get install iproute2")
    out = subprocess.run(
        [ss, "-tniH", "state", "established", "dst", f"{host}:{port}"], check=True, capture_output=True, text=True, timeout=10
    ).stdout
    connections: dict[str, TcpBytes] = {}
    local = None
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():  # "Recv-Q Send-Q Local:Port Peer:Port": a socket line
            fields = line.split()
            local = fields[2] if len(fields) >= 4 else None
            continue
        if local is None:
            continue
        counters = dict((k, int(v)) for k, v in _COUNTER.findall(line))
        connections[local] = TcpBytes(counters.get("bytes_acked", 0), counters.get("bytes_received", 0))
        local = None
    return connections


@dataclass(frozen=True)
class WireCount:
    """Bytes the client's connections to one server carried between two readings."""

    sent: int
    received: int
    connections: int
    closed: int

    @property
    def total(self) -> int:
        return self.sent + self.received


class WireCounter:
    """Read the TCP counters of every client connection to `port` on entry and on exit.

    >>> with WireCounter(port) as wire:
    ...     send_requests()
    >>> wire.count.received
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self._before: dict[str, TcpBytes] = {}
        self.count: WireCount | None = None

    def __enter__(self) -> WireCounter:
        self._before = client_connections(self.port, self.host)
        return self

    def __exit__(self, *exc: object) -> None:
        after = client_connections(self.port, self.host)
        zero = TcpBytes(0, 0)
        sent = sum(b.sent - self._before.get(k, zero).sent for k, b in after.items())
        received = sum(b.received - self._before.get(k, zero).received for k, b in after.items())
        closed = sum(1 for k in self._before if k not in after)
        self.count = WireCount(sent, received, len(after), closed)
