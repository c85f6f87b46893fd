"""The cache stage's run: a fresh server per variant over the same planned streams, then the offline parts."""

from __future__ import annotations

import os
from typing import Any

import httpx

from perfkit import tracking
from perfkit.config import Config
from perfkit.hardware import pin_threads, resolve_device
from perfkit.load.prefix import TurnTimes
from perfkit.questions import SemanticCount, characters, intents, plan_point, simulate_semantic, zipf_stream
from perfkit.stages.cache import prefix as prefix_runs
from perfkit.stages.cache.result import CacheResult, Redis
from perfkit.stages.cache.served import (
    PointRun,
    flood,
    kill_redis,
    overrides,
    redis_child,
    redis_port,
    redis_round_trip_ms,
    run_points,
    run_stream,
    servers,
)


def run(cfg: Config) -> CacheResult:
    load_start = os.getloadavg()[0]
    c = cfg.cache
    corpus = cfg.resolve("data/corpus")
    pool, cast = intents(corpus, cfg.workload.seed), characters(corpus)
    points = [plan_point(pool, t, c.min_misses, c.min_requests, c.max_requests, seed=cfg.workload.seed) for t in c.targets]
    semantic_stream = zipf_stream(pool, c.semantic_requests, c.semantic_zipf_s, cfg.workload.seed + 1, True, c.near_misses, cast)
    runs: list[PointRun] = []
    semantic: PointRun | None = None
    redis = Redis()
    plans = {v: overrides(cfg, v, c.redis_memory_mb, c.similarity_threshold) for v in c.variants}
    # The first variant's server also holds a prefix store for the prefix and conversation runs. Its point questions
    # share only the chat template's opening (24 tokens on the default model), under the store's 32-token minimum,
    # so its points are measured without reuse.
    prefix_host = next(iter(plans))
    plans[prefix_host]["serving.cache"] = {**plans[prefix_host]["serving.cache"], "prefix_mb": 1024, "prefix_min_tokens": 32}
    served_prefix: list[prefix_runs.PrefixRow] = []
    turns: list[TurnTimes] = []
    with servers(cfg, plans) as handles:
        for variant, handle in handles.items():
            mine = [p for p in points if variant != "none" or p.target == min(c.targets)]
            runs += run_points(cfg, variant, mine, handle)
            if variant == prefix_host and c.prefix_lengths:
                served_prefix = prefix_runs.served_on(handle, cfg, c.prefix_lengths, c.prefix_rounds)
            if variant == prefix_host and c.conversations:
                turns = prefix_runs.conversations_on(handle, cfg, c.conversations, c.answer_tokens)
            if variant == "redis-semantic":
                with httpx.Client(base_url=handle.base_url, timeout=600) as client:
                    timed = run_stream(client, cfg, semantic_stream, "semantic", c.max_tokens)
                semantic = PointRun(variant, -1.0, 0.0, c.semantic_zipf_s, 0, tuple(timed))
            if variant == "redis-exact" and (child := redis_child(handle)) is not None:
                port = redis_port(child)
                redis = Redis(
                    rtt_ms=tuple(redis_round_trip_ms(port)),
                    flood=flood(handle, cfg, c.flood_texts, int(c.redis_memory_mb * 2**20)),
                    fault=kill_redis(cfg, handle, zipf_stream(pool, c.fault_requests, 1.5, cfg.workload.seed + 2)),
                )
    for r in runs:
        tracking.log_variant(f"{r.variant}@{r.target:g}", point_metrics(r), {"variant": r.variant, "target": r.target})

    # Servers are stopped: the offline parts get the cores, at the server's thread count.
    pin_threads(cfg.hardware.threads)
    sweep = threshold_sweep(cfg, pool, cast)
    offline_prefix = offline_prefix_rows(cfg) if c.prefix_lengths else []
    return CacheResult(
        tuple(runs),
        semantic,
        tuple(sweep),
        redis,
        tuple(offline_prefix) + tuple(served_prefix),
        c.claim_variant,
        c.claim_target,
        c.similarity_threshold,
        c.max_tokens,
        (load_start, os.getloadavg()[0]),
        turns=tuple(turns),
    )


def point_metrics(r: PointRun) -> dict[str, Any]:
    ms = [t.latency_s * 1000 for t in r.requests]
    return {"cache_hit_rate": r.hit_rate, "latency_ms_mean": sum(ms) / len(ms), "requests": len(ms), "planned_hit_rate": r.planned_hit_rate}


def threshold_sweep(cfg: Config, pool: list[Any], cast: dict[str, tuple[str, ...]]) -> list[SemanticCount]:
    """The semantic cache replayed offline over a larger paraphrase + near-miss stream at each threshold."""
    import numpy as np

    from perfkit.models import Embedder

    c = cfg.cache
    stream = zipf_stream(pool, c.sweep_requests, c.semantic_zipf_s, cfg.workload.seed + 3, True, c.near_misses, cast)
    texts = sorted({q.text for q in stream})
    path = cfg.resolve(cfg.model.embedding_path) if cfg.model.embedding_path else None
    embedder = Embedder.load(path, resolve_device(cfg.hardware.device))
    vectors = np.concatenate([embedder.embed(texts[i : i + 64]) for i in range(0, len(texts), 64)])
    row = {t: i for i, t in enumerate(texts)}
    by_question = vectors[[row[q.text] for q in stream]]
    return [simulate_semantic(stream, by_question, t) for t in c.thresholds]


def offline_prefix_rows(cfg: Config) -> list[prefix_runs.PrefixRow]:
    from perfkit.engine import Engine
    from perfkit.models import load_causal_lm

    device = resolve_device(cfg.hardware.device)
    model, tokenizer = load_causal_lm(cfg.resolve(cfg.model.path), device)
    c = cfg.cache
    engine = Engine(model, tokenizer, device, prepack=cfg.hardware.prepack)
    return prefix_runs.offline(cfg, engine, c.prefix_lengths, c.prefix_rounds, c.prefix_exact_tokens)
