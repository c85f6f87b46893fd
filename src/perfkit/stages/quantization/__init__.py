"""The quantization stage: what each scheme buys in speed and memory, and costs in quality.

Per scheme (`perfkit.optim.quantize.SCHEMES`), all from the same fp32 checkpoint: speed and memory
in a fresh subprocess each (`measure`), quality against fp32 on held-out text in the stage's own
process (`perfkit.quality`), and an activation probe that shows which layers INT8 hurts (`experiment`).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from perfkit.config import Section
from perfkit.stages.base import MEASURED_DATA, Plot, StageSpec

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


class QuantizationConfig(Section):
    schemes: tuple[SchemeName, ...] = get_args(SchemeName)  # every scheme, in the order above
    skip_modules: tuple[str, ...] = Field(
        ("mlp.down_proj", "lm_head"), description="module-name suffixes int8-dynamic-skip-outliers keeps in fp32"
    )
    prompt_tokens: int = Field(64, ge=1)
    new_tokens: int = Field(16, ge=2)
    batch_sizes: tuple[int, ...] = (1, 8)
    scheme_timeout_s: float = Field(240.0, gt=0, description="hard limit for one scheme's subprocess (one round)")
    repeats: int = Field(
        2, ge=1, le=10_000, description="timed generations per batch size in each round (measure.rounds rounds, schemes interleaved)"
    )
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


STAGE = StageSpec(
    name="quantization",
    budget_s=320,
    title="Quantization: speed, memory and quality per scheme",
    description="Every scheme from the same fp32 checkpoint: tokens/s at each batch size and peak RSS in a fresh "
    "process each, model bytes, and quality against fp32 on held-out Persuasion (perplexity, top-1 agreement, KL).",
    run="perfkit.stages.quantization.experiment:run",
    section=QuantizationConfig,
    reads=("model", "hardware", "workload", "eval", "measure"),
    data=MEASURED_DATA,
    plots=(Plot("schemes", "scheme", "speedup"), Plot("activations", "layer", "max_abs_input")),
    order=20,
    version="2",
)
