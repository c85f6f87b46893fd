"""The sharding stage: tensor parallelism over torch.distributed ranks, exact, measured, and modelled.

For each rank count N in `sharding.ranks`, one torchrun launch (`perfkit.optim.shard_launch`) of N
ranks of `python -m perfkit shard-bench` (gloo between CPU processes, NCCL between GPUs), each
loading only its slices of the checkpoint (`perfkit.optim.shard_model`), then: greedy tokens and
logits against the plain 1-rank model, one inference's latency (TTFT, TPOT), tokens/s at each batch
size, private memory per rank, and the time inside the all-reduces of each decode step
(`perfkit.optim.shard_bench`). The scaling model (`perfkit.optim.shard_scaling`) is fitted from
the 1-rank step and an all-reduce micro-benchmark, checked against N = 2 when the step times are
steady, and extrapolated by weight bytes / bandwidth to the seed article's 13B model on 4 GPUs
(claim C5) beside gpt-fast's published curve.

On a small CPU box, N ranks share one memory bus and the cores the 1-rank run used as threads:
expect prefill to gain and decode to lose, the all-reduces waiting for the other rank to be
scheduled. Launch once per N: a torchrun start costs seconds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from perfkit.config import Section
from perfkit.stages.base import MEASURED_DATA, Plot, StageSpec


class LinkConfig(Section):
    latency_us: float = Field(gt=0, description="one small all-reduce's fixed cost, microseconds")
    gbyte_s: float = Field(gt=0, description="bus bandwidth one all-reduce moves its bytes at, GB/s")


class ClaimModelConfig(Section):
    """The model and device count of a published claim, for the scaling model's prediction."""

    name: str = "llama-2-13b"
    params_b: float = Field(13.0, gt=0, description="parameters, billions")
    layers: int = Field(40, ge=1)
    hidden: int = Field(5120, ge=1)
    vocab: int = Field(32000, ge=1)
    dtype_bytes: int = Field(2, ge=1, le=8, description="bytes per weight and per activation value (fp16: 2)")
    devices: int = Field(4, ge=1, le=1024)


class ShardingConfig(Section):
    """Tensor parallelism over torch.distributed ranks (gloo on CPU, NCCL on GPU), measured and modelled."""

    ranks: tuple[int, ...] = Field((1, 2, 3), description="rank counts measured, one torchrun launch each; 1 is the reference")
    uneven_heads: bool = Field(False, description="split whole KV groups unevenly when N does not divide the KV heads")
    embedding: Literal["replicated", "vocab"] = Field(
        "replicated", description="embedding + lm_head: on every rank, or split by vocabulary"
    )
    compare_embedding: bool = Field(True, description="also load the other embedding mode at the smallest N > 1 (memory, exactness)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    threads_per_rank: int | None = Field(None, ge=1, le=512, description="null: hardware.threads // N, at least 1")
    batch_sizes: tuple[int, ...] = Field((1, 8), description="tokens/s measured at each; the first is the latency batch")
    warmup: int = Field(1, ge=0, le=100, description="untimed short generations before timing")
    repeats: int = Field(3, ge=1, le=100_000, description="timed inferences per batch size, at least")
    max_duration_s: float = Field(60.0, gt=0, le=86_400, description="cap on one N's timed runs; a capped N says so")
    exact_prompts: int = Field(8, ge=1, le=1000, description="workload prompts whose greedy tokens and logits are compared")
    exact_new_tokens: int = Field(16, ge=1, le=4096)
    max_logit_diff: float = Field(1e-3, gt=0, description="largest |logit difference| from the 1-rank model counted as exact")
    allreduce_iters: int = Field(50, ge=1, le=100_000, description="all-reduce micro-benchmark calls per size")
    max_step_cv: float = Field(0.10, gt=0, le=10, description="the scaling model is checked only when the step-time CV is below this")
    collective_timeout_s: float = Field(30.0, gt=0, le=3600, description="gloo/NCCL timeout: a hung rank fails the run after this")
    shutdown_timeout_s: float = Field(2.0, gt=0, le=600, description="torchrun: SIGTERM to SIGKILL of the other ranks")
    launch_timeout_s: float = Field(600.0, gt=0, le=86_400, description="one torchrun launch, everything included")
    device_gbyte_s: float = Field(1555.0, gt=0, description="modelled accelerator memory bandwidth (A100 40 GB HBM2: 1555 GB/s)")
    links: dict[str, LinkConfig] = Field(
        default_factory=lambda: {
            "nvlink": LinkConfig(latency_us=10, gbyte_s=300),
            "pcie4": LinkConfig(latency_us=25, gbyte_s=25),
            "25gbe": LinkConfig(latency_us=50, gbyte_s=3.125),
        },
        description="modelled interconnects between devices",
    )
    claim_model: ClaimModelConfig = ClaimModelConfig()

    @model_validator(mode="after")
    def _ranks(self) -> ShardingConfig:
        if 1 not in self.ranks or min(self.ranks) < 1 or len(set(self.ranks)) != len(self.ranks):
            raise ValueError("ranks: distinct positive integers including 1 (the reference every N is compared with)")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("batch_sizes: positive integers, at least one")
        return self


STAGE = StageSpec(
    name="sharding",
    budget_s=300,
    prepacks=False,  # its ranks' sharded layers call torch's F.linear on their slices
    title="Sharding: tensor parallelism, exact, measured, and modelled past one machine",
    description="Tensor parallel over 1..N torch.distributed ranks (gloo on CPU, NCCL on GPU): identical greedy "
    "tokens, latency and efficiency against N, private memory per rank, time in collectives, and a checked "
    "scaling model's prediction for the article's 13B x 4 GPUs (C5).",
    run="perfkit.stages.sharding.experiment:run",
    section=ShardingConfig,
    reads=("model", "hardware", "workload"),
    data=MEASURED_DATA,
    plots=(Plot("scaling", "ranks", "latency_ms"), Plot("prediction", "ranks", "speedup")),
    order=25,
)
