"""The distillation stage: layer-dropped students of the default model, distilled from it, and what they keep.

Claim C16 says a 13B -> 3B student trained on teacher-generated data with a KL loss keeps 89% of
the accuracy at 4x the speed. Here the student is the teacher with decoder layers removed
(`perfkit.optim.prune`), trained with `perfkit.optim.distill` on teacher-generated and corpus text
(`perfkit.optim.distill_data`), beside two controls at the same data and steps: the student
untrained, and the student fine-tuned with cross-entropy only. Every model (fp32 teacher, bf16
teacher, every student) is timed by `perfkit.speed` and scored against the fp32 teacher on held-out
*Persuasion* (`perfkit.quality`); "accuracy kept" is the student's next-token top-1 accuracy over
the teacher's, with a bootstrap interval over tokens. A learning curve (evaluated every
`eval_every` steps) is fitted with a power law in training tokens, whose extrapolation says how
much training 80% and 89% kept would take.

This module holds only the declaration (no torch): the params section and where `run` lives.
The trained students are the stage's DVC output (`data/models/distilled/`); the teacher data and
the training checkpoints (`data/distill/`, named by a hash of what went into them) are a cache the
stage manages itself and not a DVC output: DVC deletes a stage's outputs before it runs it again,
which would throw away the checkpoint a killed run resumes from.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from perfkit.config import Section
from perfkit.stages.base import MEASURED_DATA, Plot, StageSpec

LossName = Literal["forward_kl", "reverse_kl", "ce"]
StudentScheme = Literal["fp32", "bf16"]


class DistillationConfig(Section):
    """params.yaml `distillation`: students, data, training, evaluation. `preset: long` swaps in `presets.long`."""

    preset: str | None = Field(None, description="null: the keys below; a name under `presets` replaces the keys it sets")
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="named sets of overrides, e.g. long")
    student_layers: tuple[int, ...] = Field((10,), description="decoder layers each student keeps (one student per entry)")
    selection: Literal["evenly", "importance"] = Field(
        "importance", description="evenly: layers 0, 1, last and spread; importance: largest input/output angular distance"
    )
    importance_tokens: int = Field(2048, ge=16, description="training-corpus tokens the layer importance is measured on")
    losses: tuple[LossName, ...] = Field(
        ("forward_kl", "ce"), description="each student is trained once per loss, at equal steps; ce is the fine-tuning control"
    )
    alpha: float = Field(1.0, ge=0, le=1, description="KL losses: alpha x T^2 x KL + (1 - alpha) x cross-entropy")
    temperature: float = Field(1.0, gt=0, le=20, description="softmax temperature of teacher and student in the KL")
    top_k: int = Field(64, ge=1, le=4096, description="teacher logits cached per position (plus the rest's mass)")
    seq_len: int = Field(256, ge=8, le=8192, description="tokens per training sequence")
    generated_sequences: int = Field(16, ge=0, description="prompt + teacher's greedy continuation, per sequence")
    corpus_sequences: int = Field(48, ge=0, description="sequences of training-novel text (Persuasion held out)")
    prompt_tokens: int = Field(128, ge=4, description="generated sequences: prompt length before the teacher's continuation")
    data_seed: int = Field(1, description="draws the training prompts and passages (the workload uses its own seed)")
    lr: float = Field(3e-4, gt=0, le=1)
    batch_size: int = Field(8, ge=1, le=4096, description="sequences per optimizer step")
    micro_batch: int = Field(2, ge=1, le=4096, description="sequences per forward pass (gradients accumulated)")
    max_steps: int = Field(15, ge=0, description="optimizer steps per student and loss")
    max_minutes: float = Field(
        5.0, gt=0, description="wall-time limit per training run; later losses of a student run the steps the first ran"
    )
    checkpoint_every: int = Field(5, ge=1, description="steps between checkpoints (weights, AdamW, step, data cursor; the last kept)")
    eval_every: int = Field(5, ge=1, description="steps between learning-curve points")
    bf16_autocast: Literal["auto", "on", "off"] = Field("auto", description="auto: bf16 autocast where the CPU has native bf16")
    student_schemes: tuple[StudentScheme, ...] = Field(
        ("fp32", "bf16"),
        description="dtypes each trained student is timed in (its speed-up over each teacher is taken in "
        "the teacher's dtype: without bf16, none over the bf16 teacher)",
    )
    speed_prompt_tokens: int = Field(64, ge=1)
    speed_new_tokens: int = Field(16, ge=2)
    batch_sizes: tuple[int, ...] = Field((1, 8), description="timed batch sizes: the first gives TPOT and the speed-up")
    speed_timeout_s: float = Field(240.0, gt=0, description="hard limit for one model's timing subprocess")
    rounds: int = Field(1, ge=1, le=100, description="timing rounds, variants interleaved; speed-up intervals need >= 2")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples over held-out tokens")
    target_size_ratio: float = Field(4.3, gt=1, description="teacher/student non-embedding parameters that test C16 (13B -> 3B)")
    target_kept_pct: float = Field(89.0, gt=0, le=100, description="accuracy kept the budget must reach to test C16")
    target_speedup: float = Field(4.0, gt=0, description="the student whose speed-up is closest heads the summary")
    cache_dir: str = Field("data/distill", description="teacher data and checkpoints")
    models_dir: str = Field("data/models/distilled", description="trained students are saved here (save_pretrained)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("preset"):
            return data
        presets = data.get("presets") or {}
        if data["preset"] not in presets:
            raise ValueError(f"preset {data['preset']!r}: not under presets; allowed: {', '.join(presets) or 'none defined'}")
        return {**data, **presets[data["preset"]]}

    @model_validator(mode="after")
    def _consistent(self) -> DistillationConfig:
        if not self.student_layers or min(self.student_layers) < 1:
            raise ValueError("student_layers: positive layer counts, at least one")
        if not self.losses or len(set(self.losses)) != len(self.losses):
            raise ValueError("losses: each of forward_kl, reverse_kl, ce at most once, at least one")
        if self.batch_size % self.micro_batch:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch ({self.micro_batch})")
        if self.generated_sequences + self.corpus_sequences < 1:
            raise ValueError("generated_sequences + corpus_sequences: at least one training sequence")
        if self.prompt_tokens >= self.seq_len and self.generated_sequences:
            raise ValueError(f"prompt_tokens ({self.prompt_tokens}) must be below seq_len ({self.seq_len})")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("batch_sizes: positive integers, at least one")
        return self


STAGE = StageSpec(
    name="distillation",
    budget_s=600,
    title="Distillation: layer-dropped students, what they keep and how fast they run",
    description="Students that keep some of the teacher's decoder layers, trained with a KL loss on teacher-generated "
    "and corpus text, beside an untrained and a cross-entropy control at equal steps; every model timed the same way "
    "and scored against the fp32 teacher on held-out Persuasion (accuracy kept with a bootstrap interval); the learning "
    "curve's power-law trend extrapolates the training 80% and 89% kept would need.",
    run="perfkit.stages.distillation.experiment:run",
    section=DistillationConfig,
    reads=("model", "hardware", "workload", "eval", "measure"),
    data=MEASURED_DATA,
    plots=(Plot("variants", "variant", "accuracy_kept_pct"), Plot("curve", "tokens", "accuracy_kept")),
    outs=("data/models/distilled",),
    order=45,
)
