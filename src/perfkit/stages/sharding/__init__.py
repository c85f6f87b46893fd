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

from perfkit.config import ShardingConfig
from perfkit.stages.base import MODEL_DIR, Plot, StageSpec

STAGE = StageSpec(
    name="sharding",
    title="Sharding: tensor parallelism, exact, measured, and modelled past one machine",
    description="Tensor parallel over 1..N torch.distributed ranks (gloo on CPU, NCCL on GPU): identical greedy "
    "tokens, latency and efficiency against N, private memory per rank, time in collectives, and a checked "
    "scaling model's prediction for the article's 13B x 4 GPUs (C5).",
    run="perfkit.stages.sharding.experiment:run",
    section=ShardingConfig,
    reads=("model", "hardware", "workload"),
    data=("data/corpus", "data/claims.yaml", MODEL_DIR),
    plots=(Plot("scaling", "ranks", "latency_ms"), Plot("scaling", "ranks", "efficiency"),
           Plot("prediction", "ranks", "speedup")),
    order=25,
)
