"""Running the sharding stage: one torchrun launch per rank count, the 1-rank run first (the reference)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from perfkit.config import Config
from perfkit.stages.sharding.result import RankRun, ShardingResult

log = logging.getLogger("perfkit.sharding")


def check_ranks(cfg: Config) -> None:
    """Refuse, before any launch, a rank count the model's KV heads do not allow (naming the allowed ones), or, on
    CUDA, more ranks than GPUs (NCCL runs one rank per GPU)."""
    from transformers import AutoConfig

    from perfkit.config import ConfigError
    from perfkit.hardware import resolve_device
    from perfkit.models import check_model_dir
    from perfkit.optim.shard_model import Plan

    if resolve_device(cfg.hardware.device).type == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if max(cfg.sharding.ranks) > gpus:
            raise ConfigError(
                f"params.yaml: sharding.ranks = {list(cfg.sharding.ranks)}: NCCL runs one rank per GPU and "
                f"this machine has {gpus}; allowed: rank counts up to {gpus}"
            )

    model = AutoConfig.from_pretrained(check_model_dir(cfg.resolve(cfg.model.path)), local_files_only=True)
    for n in cfg.sharding.ranks:
        Plan.build(model, n, 0, uneven_heads=cfg.sharding.uneven_heads, embedding=cfg.sharding.embedding)


def launch(cfg: Config, n: int, out_dir: Path, *extra: str) -> dict[str, Any]:
    """torchrun `n` ranks of shard-bench over this config's params.yaml; rank 0's result."""
    from perfkit import tracking
    from perfkit.optim import shard_launch

    s = cfg.sharding
    threads = s.threads_per_rank or max(1, cfg.hardware.threads // n)
    env = os.environ | {"PERFKIT_ROOT": str(cfg.root), "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    env.pop(tracking.RUN_ID_ENV, None)
    args = ["shard-bench", *(["--smoke"] if cfg.smoke else []), *extra]
    log.info("sharding: %d rank(s) of %d thread(s)", n, threads)
    return shard_launch.run(n, args, out_dir, timeout_s=s.launch_timeout_s, shutdown_timeout_s=s.shutdown_timeout_s, env=env)


def run(cfg: Config) -> ShardingResult:
    """Every rank count in `sharding.ranks` (1 first), the other embedding mode at the smallest N > 1, the model."""
    from perfkit import tracking
    from perfkit.optim.shard_scaling import Link

    s = cfg.sharding
    check_ranks(cfg)
    ranks = sorted(s.ranks)
    raw: dict[int, dict[str, Any]] = {}
    other = None
    with tempfile.TemporaryDirectory(prefix="perfkit-shard-") as tmp:
        reference = Path(tmp) / "n1" / "reference.pt"
        for n in ranks:
            raw[n] = launch(cfg, n, Path(tmp) / f"n{n}", *(["--reference", str(reference)] if n > 1 else []))
            tracking.log_variant(f"ranks-{n}", RankRun.of(raw[n]).metrics(), {"sharding.ranks": n})
        sharded = [n for n in ranks if n > 1]
        if s.compare_embedding and sharded:
            mode = "vocab" if s.embedding == "replicated" else "replicated"
            other = launch(
                cfg,
                sharded[0],
                Path(tmp) / f"n{sharded[0]}-{mode}",
                "--mode",
                "load",
                "--reference",
                str(reference),
                "--set",
                f"sharding.embedding={mode}",
            )
    links = {name: Link(name, link.latency_us * 1e-6, link.gbyte_s * 1e9) for name, link in s.links.items()}
    return ShardingResult(
        runs=tuple(RankRun.of(raw[n]) for n in ranks),
        raw=raw,
        other_embedding=other,
        max_step_cv=s.max_step_cv,
        cores=os.cpu_count() or 0,
        max_logit_diff_allowed=s.max_logit_diff,
        links=links,
        device_bytes_s=s.device_gbyte_s * 1e9,
        claim_model=s.claim_model.model_dump(),
    )
