"""Overload: open-loop Poisson arrivals at 10x the measured capacity for 30 s.

A server that queues without bound answers everything, later and later, until memory or clients
give out; one with admission control refuses early with 429 (per-key rate limit) or 503 (expected
queue wait above `serving.max_queue_wait_s`), each with Retry-After. This script checks the second
behaviour on the reference server:

1. start it and measure its capacity: a closed-loop run of `load.users` users (after a warm-up
   round), capacity = requests/s, service time = the mean latency at that load minus the mean
   queue wait the server reports (`perfkit_queue_wait_seconds`): the time a request takes once the
   engine starts on it. Sequential, that is latency / users; batched, it is a whole batch's time,
   which latency / users (the inverse of throughput) would understate by the batch size;
2. note its idle RSS, then send open-loop Poisson traffic at `--factor` x capacity for
   `--seconds` (latency counted from each request's scheduled time);
3. pass when every request got 200, 429 or 503 within `max_queue_wait_s` + one service time, the
   server's peak RSS stayed within 1.2x idle, and it still answers /health afterwards.

`--scheduler dynamic|continuous` floods a batched server instead. There the bound can be overshot
at the flood's onset: the first admissions are priced at the step cost measured before the flood,
and handling the flood's arrivals on the same cores then slows every decode step; the prices catch
up within their horizon (`admission.ServicePrices`), after which admitted requests wait less than
estimated. The JSON's `client_cpu_pct` is the load generator's own share of a core.

Prints one JSON object as its last line. `--smoke` runs on the smoke config in seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import get_args

import httpx
import psutil

from perfkit import config, service_sections
from perfkit.hardware import ResourceSampler
from perfkit.load.runner import run_load, served_prompts
from perfkit.serving.launch import launch
from perfkit.serving.metrics import WAIT_METRIC, histogram_delta, scrape

ALLOWED = {200, 429, 503}
RSS_LIMIT = 1.2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long arrivals are scheduled")
    parser.add_argument("--factor", type=float, default=10.0, help="arrival rate as a multiple of measured capacity")
    parser.add_argument(
        "--scheduler",
        choices=get_args(service_sections.SchedulerMode),
        default=None,
        help="scheduling mode (default: the baseline stage's, sequential)",
    )
    parser.add_argument("--smoke", action="store_true", help="the smoke config: tiny workload, seconds")
    args = parser.parse_args(argv)
    cfg = config.load("baseline", smoke=args.smoke)
    overrides: dict[str, str] = {}
    if args.scheduler:  # the server reads it from its overrides; cfg says which one ran
        overrides = {"serving.scheduler": args.scheduler}
        cfg = cfg.model_copy(update={"serving": cfg.serving.model_copy(update={"scheduler": args.scheduler})})
    prompts = served_prompts(cfg)
    users = cfg.load.users
    with launch(cfg, overrides=overrides, probe_cold_start=False) as server, TemporaryDirectory() as tmp:
        before = scrape(server.base_url)
        probe = run_load(cfg, server, prompts, Path(tmp) / "capacity", mode="closed", users=users, requests=users, warmup_requests=users)
        capacity = probe.summary.throughput_rps
        waited = histogram_delta(before.get(WAIT_METRIC, {}), scrape(server.base_url).get(WAIT_METRIC, {}))
        answered = [r.e2e_s for r in probe.timings if r.ok]  # warm-up round included, as in the server's histogram
        mean_wait_s = waited.get("sum", 0.0) / max(waited.get("count", 0.0), 1.0)
        service_s = sum(answered) / len(answered) - mean_wait_s if answered else float("inf")
        idle_rss_mb = psutil.Process(server.pid).memory_info().rss / 2**20
        rate = args.factor * capacity
        requests = max(1, math.ceil(rate * args.seconds))
        bound_s = cfg.serving.max_queue_wait_s + service_s
        with ResourceSampler(server.pid, cfg.hardware.sample_interval_s) as sampler:
            flood = run_load(
                cfg,
                server,
                prompts,
                Path(tmp) / "overload",
                mode="open",
                users=users,
                rate_rps=rate,
                requests=requests,
                warmup_requests=0,
                duration_s=args.seconds + bound_s + 30.0,
            )
        alive = httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
    codes: dict[str, int] = {}
    for r in flood.timings:
        codes[str(r.status)] = codes.get(str(r.status), 0) + 1
    slowest = max(r.e2e_s for r in flood.timings)
    checks = {
        "every_request_answered": len(flood.timings) == requests,
        "only_200_429_503": all(r.status in ALLOWED for r in flood.timings),
        "within_queue_bound": slowest <= bound_s,
        "rss_within_1_2x_idle": sampler.usage.peak_rss_mb <= RSS_LIMIT * idle_rss_mb,
        "server_alive": alive,
    }
    result = {
        "scheduler": cfg.serving.scheduler,
        "max_batch_size": cfg.serving.max_batch_size,
        "capacity_rps": capacity,
        "service_s": service_s,
        "rate_rps": rate,
        "requests": requests,
        "answered": len(flood.timings),
        "codes": codes,
        "slowest_s": slowest,
        "bound_s": bound_s,
        "idle_rss_mb": idle_rss_mb,
        "peak_rss_mb": sampler.usage.peak_rss_mb,
        "client_cpu_pct": flood.summary.client_cpu_pct,
        "load_flags": list(flood.summary.flags),
        "checks": checks,
        "pass": all(checks.values()),
    }
    print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
