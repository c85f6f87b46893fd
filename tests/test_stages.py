"""The stage registry: declarations are cheap, generated files agree with it, a new stage is three files."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, judged, smoke_experiments

from perfkit import stages
from perfkit.stages import scaffold

SRC = REPO / "src" / "perfkit"


def test_listing_the_stages_imports_no_torch():
    code = "import sys; from perfkit import stages, config; stages.registry(); config.config_class(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_committed_dvc_yaml_is_what_the_registry_gives():
    committed = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert committed == scaffold.dvc_yaml(), "run `perfkit stages --dvc` and commit dvc.yaml"


def test_a_plot_naming_a_missing_table_or_column_fails_the_stage():
    import pandas as pd
    import pytest

    from perfkit.stages.base import Plot, StageSpec
    from perfkit.stages.notebook import check_plots

    spec = StageSpec(name="x", title="x", run="m:f", plots=(Plot("rows", "i", "y"),))
    check_plots(spec, {"rows": pd.DataFrame({"i": [1], "y": [2]})})
    with pytest.raises(ValueError, match="rows.csv has no column 'y'"):
        check_plots(spec, {"rows": pd.DataFrame({"i": [1], "z": [2]})})
    with pytest.raises(ValueError, match="no table 'rows'"):
        check_plots(spec, {})


def test_every_notebook_stage_has_the_generated_thin_notebook():
    for name, spec in stages.registry().items():
        path = REPO / "notebooks" / f"{name}.ipynb"
        if not spec.notebook:
            assert not path.exists()
            continue
        committed = json.loads(path.read_text())
        assert committed == scaffold.notebook(spec), f"regenerate {path} with `perfkit stage new {name}`"
        assert len(committed["cells"]) <= 7


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_no_stage_imports_another_stage_and_no_module_passes_400_lines():
    for path in SRC.rglob("*.py"):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue  # generated gRPC stubs
        assert len(path.read_text().splitlines()) <= 400, path
    for name in stages.registry():
        own = f"perfkit.stages.{name}"
        files = list((SRC / "stages" / name).rglob("*.py")) if (SRC / "stages" / name).is_dir() else [SRC / "stages" / f"{name}.py"]
        for path in files:
            others = {m for m in _imports(path) if m.startswith("perfkit.stages.") and not m.startswith(own)}
            assert others <= {"perfkit.stages.base"}, (path, others)


def test_a_new_stage_is_three_files_and_runs_end_to_end(perfkit_root, register_stage):
    """A toy stage outside the package (PERFKIT_STAGES), scaffolded and run in smoke mode through the stage runner."""
    from perfkit import tracking
    from perfkit.stage import run_stage

    register_stage("toy_stage", TOY)
    written = scaffold.new_stage("toy", perfkit_root)
    assert perfkit_root / "notebooks" / "toy.ipynb" in written
    params = yaml.safe_load((perfkit_root / "params.yaml").read_text())
    params["toy"] = {"repeats": 3}
    params["smoke"]["toy"] = {"repeats": 2}
    (perfkit_root / "params.yaml").write_text(yaml.safe_dump(params))

    metrics = json.loads(run_stage("toy", smoke=True, root=perfkit_root).read_text())
    summary = metrics["summary"]
    assert summary["repeats"] == 2 and summary["version"].endswith("+toy.7")
    assert summary["speedup"] == 3.0 and "claims" not in summary  # a stage measures; the report judges its summary
    toy_claims = perfkit_root / "data" / "claims.yaml"
    toy_claims.write_text(TOY_CLAIMS)
    assert judged("toy", summary, toy_claims)["C1:toy speed-up"].status == "holds"  # 3.0 against at least 2
    out = smoke_experiments(perfkit_root) / "toy"
    assert (out / "toy.html").is_file() and (out / "rows.csv").is_file()
    c = tracking.client(perfkit_root)
    runs = c.search_runs([c.get_experiment_by_name("perfkit/toy").experiment_id])
    assert [r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags] == ["FINISHED"]
    # Provenance comes for free to every stage: metrics.json and the MLflow run carry the same.
    prov = summary["provenance"]
    assert prov["budget_s"] == 60.0 and "claims_sha256" not in prov  # a claim edit reruns the report, not the stage
    assert prov["stage_version"] == "7" and prov["smoke"] is True and prov["threads"] == 1
    assert prov["model_digest"].startswith("sha256:") and prov["corpus_sha256"] != "absent"
    assert {"load_avg_1m_start", "load_avg_1m_end", "pkg_torch", "pkg_grpcio", "cpu_flags", "git_dirty", "started_at"} <= set(prov)
    assert isinstance(prov["wall_s"], float) and prov["wall_s"] >= 0
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["prov.config_sha256"] == prov["config_sha256"] == parent.data.tags["params.sha"]
    assert parent.data.tags["prov.load_avg_1m_end"] == str(prov["load_avg_1m_end"])
    assert not (perfkit_root / "experiments").exists()  # a smoke run writes under its scratch root only


def test_a_notebook_by_default_shows_the_saved_result_measuring_nothing(perfkit_root, register_stage):
    """Load mode: the saved result.json comes back as the run's object; the notebook opens no MLflow run, writes nothing."""
    import papermill

    from perfkit import results, tracking
    from perfkit.stage import run_stage

    register_stage("toy_stage", TOY)
    scaffold.new_stage("toy", perfkit_root)
    run_stage("toy", smoke=True, root=perfkit_root)
    out = smoke_experiments(perfkit_root) / "toy"
    loaded = results.load(out)
    assert type(loaded).__name__ == "ToyResult" and loaded.xs == (2.0,) and loaded.provenance["smoke"] is True
    assert loaded.metrics()["summary"] == json.loads((out / "metrics.json").read_text())["summary"]

    before = {p: p.stat().st_mtime for p in out.iterdir()}
    executed = perfkit_root / "load-mode.ipynb"
    papermill.execute_notebook(
        str(perfkit_root / "notebooks" / "toy.ipynb"),
        str(executed),
        parameters={"smoke": True},
        kernel_name="perfkit",
        cwd=str(perfkit_root / "notebooks"),
        progress_bar=False,
    )
    text = executed.read_text()
    assert "The toy ran 1 times." in text and "'rows'" in text  # the conclusion, and the tables listed for slicing
    assert {p: p.stat().st_mtime for p in out.iterdir()} == before and not (perfkit_root / "experiments").exists()
    c = tracking.client(perfkit_root)
    runs = c.search_runs([c.get_experiment_by_name("perfkit/toy").experiment_id])
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1  # only the measuring run


def test_a_typo_in_any_stage_section_is_refused_by_every_stage():
    from perfkit import config

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["compression"]["gzip_level"] = [1]
    try:
        config.parse(raw, root=REPO, stage="baseline")
    except config.ConfigError as exc:
        assert "compression.gzip_level" in str(exc) and "gzip_levels" in str(exc)
    else:
        raise AssertionError("a typo in the compression section passed")


TOY = """
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from perfkit.config import Config, Section
from perfkit.stages.base import Plot, StageResult, StageSpec


class ToyConfig(Section):
    repeats: int = 1


STAGE = StageSpec(name="toy", title="Toy", run="toy_stage:run", section=ToyConfig, plots=(Plot("rows", "i", "x"),), version="7",
                  budget_s=60.0)


@dataclass(frozen=True)
class ToyResult(StageResult):
    spec = STAGE
    xs: tuple[float, ...]

    def variants(self):
        return self.xs

    def summary(self) -> dict[str, Any]:
        return {"repeats": len(self.xs), "speedup": max(self.xs)}

    def tables(self):
        import pandas as pd

        return {"rows": pd.DataFrame({"i": range(len(self.xs)), "x": self.xs})}

    def figures(self):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot(self.xs)
        return {"toy": fig}

    def conclusion(self) -> str:
        return f"The toy ran {len(self.xs)} times."


def run(cfg: Config) -> ToyResult:
    return ToyResult(tuple(float(i + 2) for i in range(cfg.toy.repeats)))
"""

TOY_CLAIMS = """claims:
  - {id: C1, area: toy, text: t, checks: [{label: toy speed-up, stage: toy, metric: speedup, claimed: 2, unit: x}]}
"""
