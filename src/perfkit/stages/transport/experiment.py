"""The transport stage's run: a REST and a gRPC server on the same model, every cell, token streams, load."""

from __future__ import annotations

import time

import httpx

from perfkit import tracking
from perfkit.config import Config
from perfkit.load.payload_load import LoadCell, run_payload_load
from perfkit.serving import perfkit_pb2_grpc as pb_grpc
from perfkit.serving.grpc_client import channel
from perfkit.serving.launch import launch
from perfkit.stages.transport.cells import IDENTITY, PayloadCell, merge_streams, payload_cell, routes, token_streams
from perfkit.stages.transport.result import TransportResults


def run(cfg: Config) -> TransportResults:
    """Start a REST and a gRPC server on the configured model, measure every cell, log each variant."""
    t = cfg.transport
    started = time.perf_counter()
    cells: list[PayloadCell] = []
    loads: list[LoadCell] = []
    payload_routes = {"serving.payload_routes": True}  # the transport payload endpoints exist only where asked for
    with (
        launch(cfg, protocol="rest", overrides=payload_routes, probe_cold_start=False) as rest_h,
        launch(cfg, protocol="grpc", overrides=payload_routes, probe_cold_start=False) as grpc_h,
        httpx.Client(base_url=rest_h.base_url, timeout=300, headers=IDENTITY) as rest,
        channel(grpc_h.base_url, t.grpc_max_message_bytes) as ch,
    ):
        stub = pb_grpc.PerfkitStub(ch)
        # measure.rounds rounds, every cell once per round in the same order (each with its own warm-up): drift
        # between rounds hits every route alike, and each cell's figure carries a between-round interval.
        plan = [
            (size_kb, route, mode)
            for size_kb in t.sizes_kb
            for route in routes(cfg)
            for mode in (["unary", "chunked"] if size_kb >= t.chunked_min_kb else ["unary"])
        ]
        per_round: dict[int, list] = {i: [] for i in range(len(plan))}
        stream_rounds = []
        for _ in range(cfg.measure.rounds):
            for i, (size_kb, route, mode) in enumerate(plan):
                handle = rest_h if route.protocol == "rest" else grpc_h
                per_round[i].append(payload_cell(cfg, route, size_kb, mode, rest, stub, handle.port))
            stream_rounds.append(token_streams(cfg, rest, stub))
        for i in range(len(plan)):
            cell = PayloadCell.merge(per_round[i])
            tracking.log_variant(cell.variant, cell.metrics())
            cells.append(cell)
        streams = merge_streams(stream_rounds)
        for s in streams:
            tracking.log_variant(f"{s.protocol}-token-stream", s.metrics())
        for size_kb in t.load_sizes_kb:
            for handle in (rest_h, grpc_h):
                lc = run_payload_load(cfg, handle.protocol, handle.port, size_kb)
                tracking.log_variant(lc.variant, lc.summary.as_metrics())
                loads.append(lc)
    wall_s = time.perf_counter() - started
    return TransportResults(tuple(cells), tuple(streams), tuple(loads), wall_s, t.load_kind, cfg.measure.noisy_cv, cfg.measure.min_repeats)
