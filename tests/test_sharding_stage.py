"""The sharding stage end to end in smoke mode (torchrun at N = 1 and 2 on the tiny model), and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import judged, smoke_experiments, write_params

from perfkit import config


def test_sharding_config_needs_the_one_rank_reference(perfkit_root: Path) -> None:
    with pytest.raises(config.ConfigError, match="including 1"):
        config.parse({"sharding": {"ranks": [2, 3]}}, root=perfkit_root, stage="sharding")
    with pytest.raises(config.ConfigError, match="sharding.embedding"):
        config.parse({"sharding": {"embedding": "columns"}}, root=perfkit_root, stage="sharding")


def test_stage_refuses_a_rank_count_the_kv_heads_do_not_allow_before_launching(perfkit_root: Path, tiny_model_dir: Path) -> None:
    from perfkit.optim.shard_model import ShardingError
    from perfkit.stages.sharding.experiment import check_ranks

    write_params(perfkit_root, {"model": {"path": str(tiny_model_dir)}, "sharding": {"ranks": [1, 3], "uneven_heads": False}})
    cfg = config.load("sharding", root=perfkit_root)
    with pytest.raises(ShardingError, match="allowed rank counts: 1, 2"):  # the tiny model has 2 KV heads
        check_ranks(cfg)


def test_sharding_stage_runs_in_smoke_mode(perfkit_root: Path) -> None:
    from perfkit.stage import run_stage

    summary = json.loads(run_stage("sharding", smoke=True, root=perfkit_root).read_text())["summary"]
    assert summary["ranks_measured"] == "1,2"
    assert summary["tokens_identical"] is True and summary["max_logit_diff"] <= 1e-3
    assert summary["comm_share_n2"] > 0 and summary["allreduce_bytes_per_token_n2"] == 2 * 2 * 64 * 4
    assert "speedup_4_ranks" not in summary
    assert summary["claim_ranks_measured"] is False and {"model_validated", "model_error_pct_n2", "model_check_n2"} <= set(summary)
    claims = judged("sharding", summary)
    c5 = claims["C5:speed-up at 4 ranks"]
    assert c5.status == "not tested here" and c5.why.startswith("4 ranks were not measured here (ranks 1,2)")
    out = smoke_experiments(perfkit_root) / "sharding"
    scaling = pd.read_csv(out / "scaling.csv").set_index("ranks")
    assert scaling.loc[2, "efficiency"] == pytest.approx(scaling.loc[2, "speedup"] / 2)
    assert set(pd.read_csv(out / "prediction.csv")["source"]) >= {"model", "published", "measured"}
    assert (out / "sharding.html").is_file()


def test_on_cuda_more_ranks_than_gpus_are_refused_naming_the_count(perfkit_root: Path, tiny_model_dir: Path, monkeypatch) -> None:
    import torch

    from perfkit.config import ConfigError
    from perfkit.stages.sharding import experiment

    write_params(perfkit_root, {"model": {"path": str(tiny_model_dir)}, "hardware": {"device": "cpu"}, "sharding": {"ranks": [1, 2]}})
    cfg = config.load("sharding", root=perfkit_root)
    monkeypatch.setattr("perfkit.hardware.resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"sharding.ranks = \[1, 2\]: NCCL runs one rank per GPU and this machine has 1"):
        experiment.check_ranks(cfg)
