"""The client side of perfkit's gRPC API: a channel whose message limits match the server's.

grpc refuses any message above 4 MiB on receipt by default, on clients as on servers, so an 8 MiB
payload fails in whichever direction crosses a default. The server and every client (the transport
stage, the tests, the Locust user) take their limits from `transport.grpc_max_message_bytes`.
Kept apart from `grpc_server`, which loads the model, so a load generator imports only grpc.
"""

from __future__ import annotations

import grpc


def message_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel/server options that set both message size limits."""
    return [("grpc.max_send_message_length", max_message_bytes), ("grpc.max_receive_message_length", max_message_bytes)]


def channel(target: str, max_message_bytes: int) -> grpc.Channel:
    """A client channel to `host:port` with the server's size limits."""
    return grpc.insecure_channel(target, options=message_options(max_message_bytes))
