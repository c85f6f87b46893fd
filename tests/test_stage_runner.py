"""The stage contract (docs/design.md §1) on a minimal notebook: outputs on success, FAILED and no metrics on failure."""

from pathlib import Path

import mlflow
import nbformat
import pytest
from conftest import smoke_experiments

from perfkit import tracking
from perfkit.stage import StageError, run_stage


def write_notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "perfkit", "display_name": "perfkit", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell('stage = "probe"\nsmoke = True')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


GOOD = """
import perfkit.config, perfkit.tracking
cfg = perfkit.config.load(stage, smoke=smoke)
perfkit.tracking.start(cfg)
perfkit.tracking.log_variant("only", {"latency_ms_p50": 1.5, "note": "text"})
perfkit.tracking.write_metrics(cfg, {"only": {"latency_ms_p50": 1.5}, "summary": {"verdict": "fine", "speedup": 1.0}})
print("done")
"""

BAD = """
import perfkit.config, perfkit.tracking
cfg = perfkit.config.load(stage, smoke=smoke)
perfkit.tracking.start(cfg)
perfkit.tracking.write_metrics(cfg, {"summary": {"verdict": "half"}})
raise RuntimeError("boom in a cell")
"""


PROBE = """
from perfkit.stages.base import StageSpec

STAGE = StageSpec(name="probe", title="probe", run="probe_stage:run")
"""


@pytest.fixture(autouse=True)
def probe_stage(register_stage) -> None:
    register_stage("probe_stage", PROBE)


def runs(root: Path, stage: str):
    c = tracking.client(root)
    exp = c.get_experiment_by_name(f"perfkit/{stage}")
    return c.search_runs([exp.experiment_id])


def test_stage_writes_notebook_html_metrics_and_a_finished_run(perfkit_root):
    write_notebook(perfkit_root / "notebooks" / "probe.ipynb", GOOD)
    metrics = run_stage("probe", smoke=True, root=perfkit_root)
    out = smoke_experiments(perfkit_root) / "probe"
    assert metrics == out / "metrics.json" and metrics.is_file()
    assert (out / "probe.ipynb").is_file()
    html = (out / "probe.html").read_text()
    assert "done" in html and "perfkit.tracking.start" not in html  # outputs shown, code hidden
    all_runs = runs(perfkit_root, "probe")
    parent = next(r for r in all_runs if "mlflow.parentRunId" not in r.data.tags)
    child = next(r for r in all_runs if "mlflow.parentRunId" in r.data.tags)
    assert parent.info.status == "FINISHED"
    for tag in ("perfkit.stage", "dvc.stage", "git.commit", "params.sha", "hardware.device", "hardware.name"):
        assert tag in parent.data.tags
    assert parent.data.metrics["speedup"] == 1.0 and parent.data.tags["summary.verdict"] == "fine"
    assert parent.data.params["hardware.device"] == "cpu"
    assert child.data.tags["perfkit.variant"] == "only" and child.data.metrics["latency_ms_p50"] == 1.5
    artifacts = Path(mlflow.get_run(parent.info.run_id).info.artifact_uri.removeprefix("file://"))
    assert (artifacts / "probe.html").is_file() and str(artifacts).startswith(str(perfkit_root / "mlflow"))


def test_a_raising_cell_fails_the_stage_marks_the_run_failed_and_leaves_no_metrics_or_result(perfkit_root):
    write_notebook(perfkit_root / "notebooks" / "probe.ipynb", BAD)
    out = smoke_experiments(perfkit_root) / "probe"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text('{"stale": true}')
    (out / "result.json").write_text('{"schema": 1, "stale": true}')
    with pytest.raises(StageError, match="boom in a cell"):
        run_stage("probe", smoke=True, root=perfkit_root)
    assert not (out / "metrics.json").exists() and not (out / "result.json").exists()
    assert [r.info.status for r in runs(perfkit_root, "probe")] == ["FAILED"]


def test_missing_notebook_and_unknown_stage_are_clear_errors(perfkit_root):
    from perfkit.stages import UnknownStage

    with pytest.raises(StageError, match="probe.ipynb not found"):
        run_stage("probe", smoke=True, root=perfkit_root)
    with pytest.raises(UnknownStage, match="unknown stage 'nosuch'; stages: .*baseline"):
        run_stage("nosuch", smoke=True, root=perfkit_root)


def test_cli_exits_non_zero_on_a_bad_param(perfkit_root):
    from perfkit.__main__ import main

    (perfkit_root / "params.yaml").write_text("hardware: {device: tpu}\n")
    assert main(["stage", "quantization", "--smoke"]) == 2


TERMINATED = """
import os, signal, time
import perfkit.config, perfkit.tracking
cfg = perfkit.config.load(stage, smoke=smoke)
perfkit.tracking.start(cfg)
os.kill(os.getppid(), signal.SIGTERM)  # the kernel's parent is the stage runner: as if `kill` or a timeout hit it
time.sleep(60)
"""


def test_sigterm_marks_the_run_failed(perfkit_root):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    write_notebook(perfkit_root / "notebooks" / "probe.ipynb", TERMINATED)
    with pytest.raises(StageError, match="SIGTERM"):
        run_stage("probe", smoke=True, root=perfkit_root)
    assert [r.info.status for r in runs(perfkit_root, "probe")] == ["FAILED"]
    assert signal.getsignal(signal.SIGTERM) is before  # the runner's handler is gone again
