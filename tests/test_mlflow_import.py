"""The committed results as MLflow runs: tagged as committed, with their provenance, imported once."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from perfkit import tracking

PROV = {
    "git_commit": "0123456789abcdef",
    "started_at": "2026-12-05T04:24:00+00:00",
    "wall_s": 90.5,
    "cpu_model": "AMD EPYC",
    "smoke": False,
}


@pytest.fixture()
def committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for stage, tok_s in (("baseline", 15.1), ("optimized", 80.0)):
        out = tmp_path / "experiments" / stage
        out.mkdir(parents=True)
        summary = {"throughput_tok_s": tok_s, "verdict": f"{stage} ran", "provenance": PROV}
        (out / "metrics.json").write_text(json.dumps({"summary": summary}))
        (out / "timings.csv").write_text("i,x\n0,1\n")
    return tmp_path


def test_each_stage_becomes_one_finished_run_tagged_committed_with_its_provenance(committed):
    made = tracking.import_committed(committed)
    assert len(made) == 2
    c = tracking.client(committed)
    run = c.search_runs([c.get_experiment_by_name("perfkit/baseline").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["perfkit.source"] == "committed@0123456789abcdef"
    assert run.data.tags["prov.cpu_model"] == "AMD EPYC" and run.data.tags["summary.verdict"] == "baseline ran"
    assert run.data.metrics["throughput_tok_s"] == 15.1
    started_ms = int(datetime(2026, 12, 5, 4, 24, tzinfo=UTC).timestamp()) * 1000
    assert run.info.start_time == started_ms and run.info.end_time == started_ms + 90500
    assert sorted(a.path for a in c.list_artifacts(run.info.run_id)) == ["metrics.json", "timings.csv"]


def test_importing_twice_adds_nothing_and_a_new_commit_adds_its_runs(committed):
    assert len(tracking.import_committed(committed)) == 2
    assert tracking.import_committed(committed) == []
    path = committed / "experiments" / "baseline" / "metrics.json"
    path.write_text(json.dumps({"summary": {"throughput_tok_s": 16.0, "provenance": PROV | {"git_commit": "fedcba"}}}))
    assert len(tracking.import_committed(committed)) == 1


def test_a_measured_run_is_told_apart_from_a_committed_one(committed, tiny_model_dir):
    import yaml
    from conftest import REPO

    from perfkit import config

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"]["path"] = str(tiny_model_dir)
    (committed / "params.yaml").write_text(yaml.safe_dump(params))
    tracking.import_committed(committed)
    run_id = tracking.create_stage_run(config.load("baseline", root=committed))
    tracking.end_stage_run(run_id, committed, "FINISHED")
    c = tracking.client(committed)
    sources = sorted(r.data.tags["perfkit.source"] for r in c.search_runs([c.get_experiment_by_name("perfkit/baseline").experiment_id]))
    assert sources == ["committed@0123456789abcdef", "measured"]
