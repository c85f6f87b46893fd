"""perfkit gpu-check: every registered stage in its own capped process; ran / failed with the error / skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, smoke_experiments

from perfkit import model_shapes, stages
from perfkit.errors import PerfkitError
from perfkit.gpu import check, page

PROBE_STAGE = """
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from perfkit.config import Config, Section
from perfkit.stages.base import StageResult, StageSpec


class ProbeConfig(Section):
    mode: str = "ok"


STAGE = StageSpec(name="probe", title="Probe", run="probe_stage:run", section=ProbeConfig)


@dataclass(frozen=True)
class ProbeResult(StageResult):
    spec = STAGE

    def variants(self):
        return ()

    def summary(self) -> dict[str, Any]:
        return {"tokens_per_s": 12.5, "top1_agreement_pct": 97.0, "pid": os.getpid()}

    def tables(self):
        return {}

    def figures(self):
        return {}

    def conclusion(self) -> str:
        return "The probe ran."


def run(cfg: Config) -> ProbeResult:
    if cfg.probe.mode == "raise":
        raise RuntimeError("the probe broke")
    if cfg.probe.mode == "hang":
        open(os.environ["PROBE_PID_FILE"], "w").write(str(os.getpid()))
        time.sleep(600)
    return ProbeResult()
"""


@pytest.fixture()
def probe_root(perfkit_root: Path, register_stage) -> Path:
    register_stage("probe_stage", PROBE_STAGE)
    (perfkit_root / "data" / "claims.yaml").write_text("claims: []\n")
    return perfkit_root


def _run(root: Path, mode: str, tmp_path: Path, **kw) -> dict:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["probe"] = {"mode": mode}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    model = Path(yaml.safe_load((root / "params.yaml").read_text())["model"]["path"])
    return check.check(root, device="cpu", model=model, embedding=None, work=tmp_path / f"work-{mode}", only=["probe"], **kw)


def test_the_check_covers_every_registered_notebook_stage_and_refuses_an_unknown_one():
    registered = [name for name, spec in stages.registry().items() if spec.notebook]
    assert check.stage_names() == registered and "baseline" in registered and "report" in registered
    assert check.stage_names(["report", "baseline"]) == ["baseline", "report"]  # pipeline order, not the order given
    with pytest.raises(PerfkitError, match="--only nosuch: no such stage"):
        check.stage_names(["nosuch"])


def test_a_stage_that_runs_reports_its_verdict_and_figures(probe_root, tmp_path):
    report = _run(probe_root, "ok", tmp_path)
    (row,) = report["stages"]
    assert (row["stage"], row["status"], row["verdict"]) == ("probe", "ran", "The probe ran.")
    assert row["figures"]["tokens_per_s"] == 12.5 and row["figures"]["top1_agreement_pct"] == 97.0
    assert row["figures"]["pid"] != os.getpid()  # it ran in its own process
    assert report["profile"] == "none" and report["random_weights"] is False and report["device"]["device"] == "cpu"
    written = yaml.safe_load((tmp_path / "work-ok" / "params.yaml").read_text())
    assert written["hardware"]["device"] == "cpu"  # the scratch root's params, not the checkout's
    assert "optimized" not in written or "pinned" not in written["optimized"]


def test_a_stage_that_raises_is_failed_with_its_error(probe_root, tmp_path):
    (row,) = _run(probe_root, "raise", tmp_path)["stages"]
    assert row["status"] == "failed" and row["reason"] == "RuntimeError: the probe broke"


def test_a_stage_past_its_cap_is_stopped_and_failed(probe_root, tmp_path, monkeypatch):
    import psutil

    monkeypatch.setenv("PROBE_PID_FILE", str(tmp_path / "pid"))
    (row,) = _run(probe_root, "hang", tmp_path, cap_s=20)["stages"]
    assert row["status"] == "failed" and row["reason"] == "ran past its cap of 20 s"
    assert not psutil.pid_exists(int((tmp_path / "pid").read_text()))


def test_stages_the_budget_leaves_no_time_for_are_skipped_with_the_reason(probe_root, tmp_path):
    (row,) = _run(probe_root, "ok", tmp_path, budget_s=5)["stages"]
    assert row["status"] == "skipped" and row["reason"] == "the check's budget of 5 s ran out before it"


def test_random_weights_turn_quality_figures_into_a_reason_and_pin_the_stack(tmp_path):
    summary = {"tokens_per_s": 10.0, "min_top1_agreement": 0.95, "rouge_l": 0.4, "best_scheme": "bf16", "provenance": {}}
    assert check.headline(summary, random_weights=True) == {
        "tokens_per_s": 10.0,
        "min_top1_agreement": model_shapes.RANDOM_QUALITY,
        "rouge_l": model_shapes.RANDOM_QUALITY,
        "best_scheme": "bf16",
    }
    assert check.headline(summary, random_weights=False)["rouge_l"] == 0.4


def test_the_page_has_a_row_per_stage_with_its_verdict_or_reason():
    report = {
        "device": {
            "device": "cuda",
            "gpu_name": "NVIDIA H100",
            "gpu_driver": "580",
            "torch": "2.11",
            "cuda": "13.0",
            "tf32_matmul": False,
            "float32_matmul_precision": "highest",
            "sm_clock_mhz": 345,
            "sm_clock_max_mhz": 1980,
            "cpu_count": 16,
            "cpu_model": "x",
        },
        "device_after": {"sm_clock_mhz": 1980},
        "model": "m",
        "random_weights": True,
        "profile": "gpu-smoke",
        "cap_s": 80,
        "budget_s": 300,
        "wall_s": 250,
        "stages": [
            {"stage": "baseline", "status": "ran", "wall_s": 30, "verdict": "2 users | fast", "reason": ""},
            {"stage": "report", "status": "skipped", "wall_s": 0, "verdict": "", "reason": "no time"},
        ],
    }
    text = page.markdown(report)
    assert "# perfkit gpu-check on NVIDIA H100" in text and "SM clock 345 MHz before, 1980 after" in text
    assert "| baseline | ran | 30 | 2 users \\| fast |" in text and "| report | skipped | 0 | no time |" in text
    assert "random weights: quality figures are not meaningful" in text


def test_with_tracking_off_a_stage_writes_its_results_without_importing_mlflow(tmp_path):
    code = (
        "import sys, pandas as pd; from pathlib import Path; from perfkit import config, tracking;"
        f"cfg = config.load('baseline', root=Path({str(REPO)!r})).model_copy(update={{'root': Path({str(tmp_path)!r})}});"
        "tracking.log_variant('v', {'x': 1.0});"
        "tracking.write_table(cfg, 't', pd.DataFrame({'a': [1]})); tracking.write_metrics(cfg, {'summary': {'x': 1}});"
        "print('mlflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=os.environ | {"PERFKIT_TRACKING": "off"}, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
    assert json.loads((tmp_path / "experiments" / "baseline" / "metrics.json").read_text()) == {"summary": {"x": 1}}


@pytest.mark.slow
def test_the_cpu_dry_run_runs_every_registered_stage_on_the_tiny_model(tiny_model_dir, tmp_path):
    committed = {p: p.stat().st_mtime for p in (REPO / "experiments").glob("*/metrics.json")}
    report = check.check(REPO, device="cpu", model=tiny_model_dir, embedding=None, work=tmp_path / "work", cap_s=600, budget_s=3000)
    statuses = {s["stage"]: (s["status"], s["reason"]) for s in report["stages"]}
    assert statuses == {name: ("ran", "") for name in check.stage_names()}
    import pandas as pd

    from perfkit import results

    for name in statuses:  # every stage's saved result loads back as the object its run rendered from
        out = smoke_experiments(tmp_path / "work") / name
        loaded = results.load(out)
        summary = json.loads((out / "metrics.json").read_text())["summary"]
        assert json.loads(json.dumps(loaded.metrics()["summary"], default=float)) == summary, name
        for table, frame in loaded.all_tables().items():
            assert pd.read_csv(out / f"{table}.csv").shape == frame.shape, (name, table)
        assert loaded.full_conclusion() and isinstance(loaded.all_figures(), dict)
    # The published site from those saved results alone: a page per stage with its conclusion, no notebook needed.
    import pandas as pd

    from perfkit import site

    experiments = smoke_experiments(tmp_path / "work")
    assert not list(experiments.glob("*/*.ipynb"))
    columns = ["claim", "claim status", "check", "engine", "kind", "claimed", "measured", "CI low", "CI high", "unit", "status", "why"]
    claims = pd.DataFrame(columns=[*columns, "stage"])
    saved = {name: results.load(experiments / name) for name in statuses}
    index = site.build(tmp_path / "site", saved, title="t", summary="s", claims=claims)
    for name in statuses:
        page = (tmp_path / "site" / f"{name}.html").read_text()
        assert results.load(experiments / name).spec.title.split(":")[0] in page, name
    assert "Not run yet" not in index.read_text()
    assert {p: p.stat().st_mtime for p in committed} == committed  # the committed results are left alone
