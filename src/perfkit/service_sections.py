"""The params.yaml sections of the reference server and its load: `serving` and `load`.

They live apart from `perfkit.config`, which holds them in `Config` with every other section, as
`perfkit.objectives` holds `slo`: the server's modules import these without the rest of config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from perfkit.section import Section


class RateLimitConfig(Section):
    enabled: bool = True
    unit: Literal["requests", "tokens"] = Field(
        "requests", description="what the bucket counts: requests, or generated tokens (a request costs its max_tokens)"
    )
    tokens_per_second: float = Field(15.0, gt=0, le=1_000_000, description="units per second refilled per client key")
    burst: int = Field(30, ge=1, le=1_000_000, description="bucket size: units a key may spend at once")


SchedulerMode = Literal["sequential", "dynamic", "continuous"]
ServingDtype = Literal["float32", "bfloat16", "float16"]


class CacheConfig(Section):
    """The server's answer cache (exact and semantic) and the engine's prefix KV cache (perfkit.serving.cache)."""

    mode: Literal["none", "exact", "semantic"] = Field(
        "none", description="none | exact: same key, same answer | semantic: also the nearest cached query above the threshold"
    )
    backend: Literal["memory", "redis"] = Field("memory", description="memory: in-process LRU | redis: a real Redis")
    scope: Literal["global", "per_key"] = Field("global", description="per_key: entries partitioned by the bearer key")
    similarity_threshold: float = Field(0.9, gt=0, le=1, description="semantic: cosine similarity a hit needs, at least")
    max_memory_mb: float = Field(64.0, gt=0, le=1_048_576, description="memory: LRU bound; redis: maxmemory (allkeys-lru)")
    max_entries: int = Field(100_000, ge=1, le=10_000_000, description="semantic: vectors the in-process index keeps, at most")
    redis_url: str | None = Field(None, description="an external Redis (redis://host:port/db); null: perfkit starts its own")
    appendonly: bool = Field(False, description="perfkit's own Redis: keep entries across a restart (AOF)")
    breaker_probe_s: float = Field(0.25, gt=0, le=60, description="while Redis is down, how often a request re-probes it")
    redis_timeout_s: float = Field(0.05, gt=0, le=10, description="socket timeout of each Redis command (no retries)")
    prefix_mb: float = Field(0.0, ge=0, le=1_048_576, description="engine prefix KV store, MiB (0: no prefix reuse)")
    prefix_min_tokens: int = Field(16, ge=1, le=32_768, description="a shorter match is recomputed; shorter sequences are not stored")


class ServingConfig(Section):
    scheduler: SchedulerMode = Field(
        "sequential", description="sequential: one request at a time; dynamic: padded batches; continuous: rows join between decode steps"
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="dynamic, continuous: most rows in one batch")
    max_wait_ms: float = Field(10.0, ge=0, le=10_000, description="dynamic, continuous: longest the idle engine waits for a batch to fill")
    max_queue_wait_s: float = Field(30.0, gt=0, le=3600, description="expected queue wait above which requests get 503")
    max_new_tokens_limit: int = Field(512, ge=1, le=32_768, description="largest max_tokens a request may ask for")
    max_body_bytes: int = Field(16 * 2**20, ge=1024, le=2**31, description="request bodies above this get 413")
    warmup: bool = Field(True, description="run one generation before reporting healthy (claim C19)")
    dtype: ServingDtype = Field("float32", description="precision the server loads the model in: float32 | bfloat16 | float16")
    kv_cache: Literal["dynamic", "slots"] = Field(
        "dynamic", description="dynamic: transformers' growing KV cache | slots: perfkit's preallocated slots (needed by `compile`)"
    )
    compile: Literal["off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"] = Field(
        "off", description="torch.compile mode of the decode step (kv_cache: slots); one graph, compiled in the warm-up"
    )
    prepared_checkpoint: bool = Field(
        False,
        description="load a copy of the model saved in `dtype` (made once, before the server starts) instead of "
        "casting the checkpoint at every start (claim C13's cold-start lever)",
    )
    payload_routes: bool = Field(False, description="serve the transport stage's payload endpoints (/v1/payload, gRPC GetPayload...)")
    fair_queueing: Literal["off", "requests", "tokens"] = Field(
        "off", description="off: one FIFO queue; requests / tokens: client keys share requests / generated tokens fairly"
    )
    fair_share_window_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="fair queueing: a key holds at most ceil(max_batch_size / keys active in this window) batch slots; "
        "0: no cap (work-conserving: a burster may fill every free slot)",
    )
    rate_limit: RateLimitConfig = RateLimitConfig()
    cache: CacheConfig = CacheConfig()

    @model_validator(mode="after")
    def _compile_needs_slots(self) -> ServingConfig:
        if self.compile != "off" and self.kv_cache != "slots":
            raise ValueError(f"compile {self.compile!r} needs kv_cache 'slots' (allowed with 'dynamic': 'off')")
        return self


class LoadConfig(Section):
    """The Locust load (perfkit.load): who sends what, how fast, for how long."""

    mode: Literal["closed", "open"] = Field("closed", description="closed: N users back to back; open: Poisson arrivals")
    users: int = Field(10, ge=1, le=100_000, description="closed-loop users (each its own bearer key); open loop: client keys")
    spawn_rate: float = Field(10.0, gt=0, le=100_000, description="users started per second")
    rate_rps: float = Field(1.0, gt=0, le=100_000, description="open loop: mean Poisson arrival rate")
    requests: int = Field(30, ge=1, le=1_000_000, description="measured requests per run, after the warm-up ones")
    warmup_requests: int = Field(10, ge=0, le=1_000_000, description="first requests of a run, sent but not measured")
    duration_s: float = Field(300.0, gt=0, le=86_400, description="hard time limit of one Locust run")
    read_chunk_bytes: int = Field(64, ge=1, le=65_536, description="stream read size (1 KB would hide TTFT)")
    workers: int = Field(0, ge=0, le=256, description="0: one Locust process; N: distributed, a master + N workers")
    master_port: int = Field(0, ge=0, le=65_535, description="distributed master port (0 = a free one)")
    retry_after_cap_s: float = Field(5.0, ge=0, le=600, description="longest a user honours Retry-After")
    max_client_cpu_pct: float = Field(80.0, gt=0, le=100, description="a Locust process busier than this is flagged")
    max_lag_ms: float = Field(20.0, gt=0, description="open loop: schedule lag p99 above this is flagged")
    timeslice_s: float = Field(
        10.0, gt=0, le=3600, description="every run's figures also per slice of this many seconds, with the trend over them"
    )
    target_url: str | None = Field(
        None, description="an OpenAI-compatible endpoint to load instead of launching the reference server (baseline, batching)"
    )
    api_key_env: str | None = Field(None, description="environment variable holding target_url's API key (never the key)")
    model: str | None = Field(None, description="target_url's model id; null: the first its /v1/models lists")

    @model_validator(mode="after")
    def _open_loop_is_one_process(self) -> LoadConfig:
        if self.mode == "open" and self.workers:
            raise ValueError("mode 'open' runs one scheduling user in one process: set workers to 0")
        if self.target_url is not None and not self.target_url.startswith(("http://", "https://")):
            raise ValueError(f"target_url must start with http:// or https://, not {self.target_url!r}")
        return self
