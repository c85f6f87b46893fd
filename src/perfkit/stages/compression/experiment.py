"""The compression stage's run: every codec and level on every payload, the speed re-check, REST, the shaped link."""

from __future__ import annotations

import subprocess
from typing import Any

import psutil

from perfkit import tracking
from perfkit.config import Config
from perfkit.probes import netlink
from perfkit.stages.compression import rounds
from perfkit.stages.compression.measure import build_payloads, check_speed, codecs, end_to_end, measure_link, measure_rest, time_codec
from perfkit.stages.compression.result import CompressionResults


def run(cfg: Config) -> CompressionResults:
    """Every codec and level on every payload, the speed check, the REST and namespace measurements."""
    c = cfg.compression
    bodies = build_payloads(cfg)
    runs = [time_codec(cfg, name, body, codec) for name, body in bodies.items() for codec in codecs(cfg)]
    speed_checks = [check_speed(r, bodies[r.payload], cfg) for r in runs if r.codec.name in c.check_codecs]
    # What a claim or the conclusion uses, timed again in interleaved rounds: Brotli 11 (C7), the sweep's fastest.
    wanted = rounds.candidates(end_to_end(runs, c.link_mbit), c.rounds_top)
    lookup = {r.codec.name: r.codec for r in runs}
    if "brotli-11" in lookup:
        for names in wanted.values():
            names.add("brotli-11")
    timed = rounds.time_rounds(cfg, bodies, wanted, lookup)
    load_avg = psutil.getloadavg()[0]
    for payload, body in bodies.items():  # one nested run per payload; its metrics are keyed `<codec>/<metric>`
        per_codec = {
            f"{r.codec.name}/{k}": v
            for r in runs
            if r.payload == payload
            for k, v in r.row().items()
            if k not in ("payload", "codec", "family", "level", "input_bytes")
        }
        tracking.log_variant(payload, per_codec, {"payload": payload, "input_bytes": len(body)})
    rest = measure_rest(cfg) if c.rest else []
    for row in rest:
        tracking.log_variant(f"rest/{row['accept_encoding']}", row)
    netns: list[dict[str, Any]] = []
    netns_skipped = netlink.availability() if c.netns else "compression.netns is false"
    if netns_skipped is None:
        try:
            netns = measure_link(cfg, runs, bodies)
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:  # the link is a check, not the result
            netns_skipped = f"the namespace link failed: {exc}"
    return CompressionResults(
        tuple(runs),
        tuple(speed_checks),
        c.link_mbit,
        tuple(rest),
        None if c.rest else "compression.rest is false",
        tuple(netns),
        netns_skipped,
        load_avg,
        tuple(timed),
        cfg.measure.noisy_cv,
        cfg.measure.min_repeats,
    )
