"""The cache stage: exact, semantic and prefix caching, judged by the hit rate they reach and the wrong hits they serve.

A cache's effect is h * t_hit + (1 - h) * t_miss: a claim about a cache ("1.2 s -> 0.3 s") says
nothing without its hit rate h. The stage therefore measures latency against the hit rate it
*measured*, on a Zipf-popular stream of questions about the corpus (`perfkit.questions`), at
settings planned to give about 0, 50, 90 and 99% hits (the 99% point pre-warms the cache), with one
closed-loop client and a fixed output length (so every miss costs the same). It fits t_hit and
t_miss from the lowest and highest points and checks the points in between against the model.

Variants: no cache, an in-process LRU, Redis (perfkit's own child redis-server) with exact keys,
and Redis with semantic lookup (MiniLM embedding of the question, nearest cached query above a
similarity threshold). A semantic cache trades correctness for hits: a stream with paraphrases
(a hit there is right) and near-misses that differ only in a name or a novel (a hit there is wrong)
measures both, served at the configured threshold and replayed offline over thresholds 0.80-0.95.
Faults: Redis killed mid-run (no 5xx, no lost request, recovery time) and a flood past
`max_memory_mb` (evictions, Redis memory at its bound, server RSS). Prefix (KV) caching: time to
first token against the length of a shared system prompt, with and without reuse, offline and
through the sequential scheduler, with the same tokens either way; and per turn of multi-turn
conversations, whose history (earlier answers included) the engine finds in its store.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from perfkit.config import Section
from perfkit.stages.base import MEASURED_DATA, Plot, StageSpec

CacheVariant = Literal["none", "memory-exact", "redis-exact", "redis-semantic"]


class CacheStageConfig(Section):
    """Latency against measured hit rate per cache variant, semantic wrong hits, Redis faults, prefix reuse."""

    variants: tuple[CacheVariant, ...] = ("none", "memory-exact", "redis-exact", "redis-semantic")
    targets: tuple[float, ...] = Field((0.0, 0.5, 0.9, 0.99), description="hit rates the stream settings aim at")
    max_tokens: int = Field(8, ge=1, le=4096, description="fixed output length of every answer (min_tokens = max_tokens)")
    min_misses: int = Field(10, ge=1, le=10_000, description="misses per point, at least (t_miss is fitted from them)")
    min_requests: int = Field(10, ge=1, le=100_000)
    max_requests: int = Field(1000, ge=1, le=1_000_000)
    claim_variant: CacheVariant = Field("redis-exact", description="the variant C2 is judged on")
    claim_target: float = Field(0.9, ge=0, lt=1, description="the point (by target) C2 is judged at")
    similarity_threshold: float = Field(0.9, gt=0, le=1, description="the served semantic variant's threshold")
    thresholds: tuple[float, ...] = Field((0.8, 0.85, 0.875, 0.9, 0.925, 0.95), description="offline semantic sweep")
    semantic_requests: int = Field(40, ge=1, le=100_000, description="served paraphrase + near-miss stream")
    sweep_requests: int = Field(300, ge=1, le=100_000, description="offline threshold sweep stream")
    semantic_zipf_s: float = Field(1.1, gt=0, le=10)
    near_misses: float = Field(0.3, ge=0, le=1, description="share of the semantic streams swapped for a near-miss")
    redis_memory_mb: float = Field(4.0, gt=0, le=1_048_576, description="maxmemory of the Redis variants")
    flood_texts: int = Field(4000, ge=0, le=10_000_000, description="embedding entries sent past maxmemory (0: skip)")
    fault_requests: int = Field(30, ge=0, le=100_000, description="requests around a Redis kill (0: skip)")
    prefix_lengths: tuple[int, ...] = Field((256, 512, 1024), description="shared system prompt lengths, tokens")
    prefix_rounds: int = Field(3, ge=1, le=1000, description="TTFT samples per length, with and without reuse")
    prefix_exact_tokens: int = Field(8, ge=1, le=1024, description="tokens compared with and without reuse")
    conversations: int = Field(
        4, ge=0, le=1000, description="multi-turn conversations (workload.turns turns each) sent with and without reuse (0: skip)"
    )
    answer_tokens: int = Field(16, ge=1, le=4096, description="each turn's answer, fixed length: it joins the history")
    launch_timeout_s: float = Field(180.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _ranges(self) -> CacheStageConfig:
        if not self.targets or min(self.targets) < 0 or max(self.targets) >= 1 or len(set(self.targets)) < 2:
            raise ValueError("targets: at least two distinct hit rates in [0, 1)")
        if self.claim_target not in self.targets:
            raise ValueError(f"claim_target: one of targets {list(self.targets)}")
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError("variants: each once, at least one; allowed: none, memory-exact, redis-exact, redis-semantic")
        if any(not 0 < t <= 1 for t in self.thresholds) or min(self.prefix_lengths, default=1) < 16:
            raise ValueError("thresholds in (0, 1]; prefix_lengths of 16 tokens or more")
        return self


STAGE = StageSpec(
    name="cache",
    budget_s=360,
    title="Cache: exact, semantic and prefix caching against measured hit rate",
    description="Latency against the measured hit rate per cache variant (none, in-process, Redis exact, Redis "
    "semantic) with the h*t_hit + (1-h)*t_miss model over the points; semantic wrong hits against threshold; a Redis "
    "kill and a flood past maxmemory; prefix KV reuse: TTFT against shared prefix length, and per turn of multi-turn "
    "conversations.",
    run="perfkit.stages.cache.experiment:run",
    section=CacheStageConfig,
    reads=("model", "hardware", "workload", "serving"),
    data=MEASURED_DATA,
    plots=(
        Plot("points", "hit_rate", "latency_ms_mean"),
        Plot("thresholds", "threshold", "precision"),
        Plot("prefix", "prefix_tokens", "ttft_ms_mean"),
        Plot("turns", "turn", "ttft_ms_mean"),
    ),
    order=45,
)
