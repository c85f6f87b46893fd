"""Provenance: digests that change when their input does, the dirty flag, dvc.lock's md5 reused, the busy note."""

import subprocess
from pathlib import Path

import pytest

from perfkit import provenance
from perfkit.stages.base import StageResult


def test_folder_digest_changes_with_any_byte_and_not_with_where_it_lies(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "x.txt").write_text("one")
    (a / "sub" / "y.txt").write_text("two")
    b = tmp_path / "elsewhere" / "b"
    b.parent.mkdir()
    subprocess.run(["cp", "-r", str(a), str(b)], check=True)
    assert provenance.sha256_path(a) == provenance.sha256_path(b)
    (b / "sub" / "y.txt").write_text("twO")
    assert provenance.sha256_path(a) != provenance.sha256_path(b)
    (b / "sub" / "y.txt").write_text("two")
    (b / "sub" / "y.txt").rename(b / "sub" / "z.txt")  # same bytes, another name
    assert provenance.sha256_path(a) != provenance.sha256_path(b)
    assert provenance.sha256_path(tmp_path / "missing") == "absent"


def test_git_dirty_flag(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True, capture_output=True)

    assert provenance.git_state(tmp_path) == ("unknown", None)
    git("init", "-q")
    (tmp_path / "f").write_text("a")
    (tmp_path / "experiments" / "s").mkdir(parents=True)
    (tmp_path / "experiments" / "s" / "metrics.json").write_text("{}")
    (tmp_path / "dvc.lock").write_text("a")
    git("add", "f", "experiments", "dvc.lock")
    git("commit", "-qm", "c")
    commit, dirty = provenance.git_state(tmp_path)
    assert len(commit) == 40 and dirty is False
    (tmp_path / "untracked").write_text("x")
    assert provenance.git_state(tmp_path)[1] is False  # new files alone do not change the code that ran
    # An earlier stage of the same dvc repro rewrote its metrics and dvc.lock: still the committed code.
    (tmp_path / "experiments" / "s" / "metrics.json").write_text('{"a": 1}')
    (tmp_path / "dvc.lock").write_text("b")
    assert provenance.git_state(tmp_path)[1] is False
    (tmp_path / "f").write_text("b")
    assert provenance.git_state(tmp_path) == (commit, True)


def test_model_digest_reuses_dvc_lock_md5_else_hashes(tmp_path):
    model = tmp_path / "data" / "models" / "m"
    model.mkdir(parents=True)
    (model / "w.bin").write_bytes(b"\0" * 10)
    assert provenance.model_digest(tmp_path, model) == f"sha256:{provenance.sha256_path(model)}"
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: x\n    outs:\n    - path: data/models/m\n      hash: md5\n      md5: abc123.dir\n"
    )
    assert provenance.model_digest(tmp_path, model) == "md5:abc123.dir"


def test_package_versions_name_absent_packages():
    found = provenance.package_versions(["pytest", "no-such-package-perfkit"])
    assert found["pytest"] == pytest.__version__ and found["no-such-package-perfkit"] == "absent"
    assert {"torchao", "optimum-quanto", "grpcio", "brotli", "zstandard", "locust", "redis"} <= set(provenance.TIMED_PACKAGES)


def test_a_busy_start_is_said_a_quiet_one_is_not():
    quiet = {"load_avg_1m_start": 0.2, "load_avg_1m_end": 1.5, "cpu_count": 2, "git_dirty": False}
    busy = quiet | {"load_avg_1m_start": 3.0}
    assert provenance.notes(quiet) == [] and provenance.notes(None) == []
    assert not provenance.started_busy(quiet) and provenance.started_busy(busy)
    # The load average lags: after the previous stage of a dvc repro it reads high on an idle machine.
    after_a_stage = {"load_avg_1m_start": 1.6, "busy_cores_start": 0.05, "cpu_count": 2}
    assert not provenance.started_busy(after_a_stage) and provenance.notes(after_a_stage) == []
    assert provenance.started_busy(after_a_stage | {"busy_cores_start": 1.2})
    assert len(provenance.notes(busy)) == 1 and len(provenance.notes(busy | {"git_dirty": True})) == 2


def test_a_stage_over_its_time_budget_is_said_but_not_in_a_smoke_run():
    within = {"wall_s": 590.0, "budget_s": 600.0}
    assert provenance.notes(within) == [] and provenance.notes({"wall_s": 5000.0, "budget_s": None}) == []
    over = {"wall_s": 750.4, "budget_s": 600.0}
    (note,) = provenance.notes(over)
    assert "750 s" in note and "600 s budget" in note
    assert provenance.notes(over | {"smoke": True}) == []  # a smoke run has its own, smaller sizes


def test_the_busy_sample_comes_from_the_runner_when_it_gave_one(monkeypatch):
    monkeypatch.setenv(provenance.BUSY_CORES_ENV, "0.734")
    assert provenance.busy_cores_start() == 0.73


def test_result_metrics_carry_provenance_and_the_conclusion_its_notes(tmp_path):
    import importlib.util
    import sys

    source = Path(__file__).with_name("test_stages.py").read_text()
    toy = source.split('TOY = """', 1)[1].split('"""', 1)[0]
    path = tmp_path / "toy_prov.py"
    path.write_text(toy)
    spec = importlib.util.spec_from_file_location("toy_prov", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_prov"] = module
    spec.loader.exec_module(module)
    result = module.ToyResult((2.0, 3.0))
    assert isinstance(result, StageResult) and "provenance" not in result.metrics()["summary"]
    busy = result.with_provenance({"load_avg_1m_start": 4.0, "cpu_count": 2, "git_commit": "abc"})
    assert busy.xs == result.xs and busy.metrics()["summary"]["provenance"]["git_commit"] == "abc"
    assert busy.full_conclusion().startswith(result.conclusion()) and busy.full_conclusion() != result.conclusion()
    assert result.full_conclusion() == result.conclusion()
    # the machine a result was measured on comes from its provenance, never from the one rendering it
    assert busy.with_provenance({"cpu_count": 64}).measured_cores() == 64 and result.measured_cores() is None


def test_no_renderer_reads_the_machine_it_renders_on():
    """Conclusions, summaries and pages describe the measuring machine (provenance), so only a stage's run may ask."""
    stages = Path(__file__).parents[1] / "src" / "perfkit" / "stages"
    renderers = ("result.py", "render.py", "baseline.py", "report.py", "base.py")
    readers = [
        f"{path.relative_to(stages)}:{n}"
        for path in stages.rglob("*.py")
        if path.name in renderers
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "cpu_count(" in line or "usable_cores(" in line
    ]
    assert readers == []


def test_the_engine_label_names_the_served_form_and_that_offline_figures_run_eager():
    assert provenance.engine_label("dynamic", "off") == "eager, dynamic KV cache"
    packed = "eager, dynamic KV cache, linear weights prepacked for oneDNN on a CPU, q/k/v and gate/up fused"
    assert provenance.engine_label("dynamic", "off", prepack=True) == packed
    assert provenance.engine_form("slots", "default", prepack=True) == "slots KV cache, torch.compile default"  # freezing packs
    assert provenance.engine_label("slots", "default") == (
        "served: slots KV cache, torch.compile default; offline: eager, dynamic KV cache"
    )
    assert provenance.engine_label("slots", "off").startswith("served: slots KV cache, eager;")


def test_a_stage_whose_engines_are_not_prepacked_is_not_labelled_so():
    from perfkit import config, stages

    cfg = config.load("baseline", root=Path(__file__).parents[1])
    assert cfg.hardware.prepack  # the default
    assert provenance.begin(cfg, stages.get("baseline"))["engine"].endswith("prepacked for oneDNN on a CPU, q/k/v and gate/up fused")
    assert provenance.begin(cfg, stages.get("sharding"))["engine"] == "eager, dynamic KV cache"  # tensor-parallel F.linear
    off = config.override(cfg, {"hardware.prepack": False})
    assert provenance.begin(off, stages.get("baseline"))["engine"] == "eager, dynamic KV cache"
