"""Cache latency targets (issue 10): what a hit costs, what the cache adds to a miss, what semantic lookup costs.

One closed-loop client, a fresh sequential server per cache variant, questions from the cache
workload (`perfkit.questions`) at a fixed output length. Per variant: `--questions` distinct
questions (each a miss, stored), then each asked again (each a hit). The server's own step times
come from its /metrics (sums and counts, not bucket bounds); the client times each request.

Targets: an exact hit from Redis on loopback <= 5 ms p50 at the server and <= 10 ms at the client
(the HTTP floor here is ~1 ms); the cache layer adds <= 1 ms to a miss (lookup + store, at the
server; the client-side difference of two ~1 s misses cannot resolve 1 ms); semantic lookup = one
embedding + <= 2 ms of search, reported.

    .venv/bin/python bench/cache.py [--questions 20] [--max-tokens 16] [--smoke]

Prints one line per variant, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os

import httpx
import numpy as np

from perfkit import config
from perfkit.questions import Question, fresh_stream, intents
from perfkit.serving.launch import launch
from perfkit.stages.cache.served import ask, cache_counters, delta, overrides

VARIANTS = ("none", "memory-exact", "redis-exact", "redis-semantic")


def step_ms(d: dict[str, float], step: str) -> float | None:
    count = d.get(f"perfkit_cache_lookup_seconds_count.{step}", 0.0)
    return 1000 * d[f"perfkit_cache_lookup_seconds_sum.{step}"] / count if count else None


def measure(cfg: config.Config, variant: str, questions: list[Question], max_tokens: int) -> dict[str, float | None]:
    sets = overrides(cfg, variant, 64.0, 0.9)
    with launch(cfg, overrides=sets, probe_cold_start=False) as handle, httpx.Client(base_url=handle.base_url, timeout=600) as client:
        ask(client, cfg, Question(questions[0].intent, 1), "warm", max_tokens)  # first-request costs out of the way
        before = cache_counters(client)
        misses = [ask(client, cfg, q, "bench", max_tokens)[0] * 1000 for q in questions]
        middle = cache_counters(client)
        hits = [ask(client, cfg, q, "bench", max_tokens)[0] * 1000 for q in questions]
        after = cache_counters(client)
    on_miss, on_hit = delta(before, middle), delta(middle, after)
    lookup, store = step_ms(on_miss, "exact"), step_ms(on_miss, "store")
    return {
        "miss_ms_p50_client": float(np.median(misses)),
        "repeat_ms_p50_client": float(np.median(hits)),
        "hit_lookup_ms_mean_server": step_ms(on_hit, "exact"),
        "miss_cache_overhead_ms_server": None if lookup is None else lookup + (store or 0.0),
        "embed_ms_mean_server": step_ms(on_miss, "embed"),
        "semantic_search_ms_mean_server": step_ms(on_miss, "semantic"),
        "hits": on_hit.get("perfkit_cache_hits_total", 0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    cfg = config.load("serve", smoke=args.smoke)
    questions = fresh_stream(intents(cfg.resolve("data/corpus"), cfg.workload.seed), args.questions)
    load = [os.getloadavg()[0]]
    out: dict[str, object] = {}
    for variant in VARIANTS:
        out[variant] = measure(cfg, variant, questions, args.max_tokens)
        print(variant, json.dumps(out[variant]), flush=True)
    load.append(os.getloadavg()[0])
    redis = out["redis-exact"]
    assert isinstance(redis, dict)
    out["targets"] = {
        "redis_hit_server_le_5ms": (redis["hit_lookup_ms_mean_server"] or 99) <= 5,
        "redis_hit_client_le_10ms": redis["repeat_ms_p50_client"] <= 10,
        "miss_overhead_le_1ms": (redis["miss_cache_overhead_ms_server"] or 99) <= 1,
    }
    out["load_avg"] = load
    print(json.dumps(out))


if __name__ == "__main__":
    main()
