"""Shared fixtures: a tiny random Llama with the real tokenizer, and a throw-away perfkit root."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama saved as a normal checkpoint (tokenizer from the shipped GGUF)."""
    from perfkit.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path):
    """(model, tokenizer, engine) over the tiny checkpoint, loaded through the real from_pretrained path."""
    from perfkit.engine import Engine
    from perfkit.models import load_causal_lm

    model, tokenizer = load_causal_lm(tiny_model_dir)
    return model, tokenizer, Engine(model, tokenizer, "cpu")


def write_params(root: Path, overrides: dict) -> None:
    """params.yaml in `root`: the repo's own, with `overrides` merged section by section."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(params.get(section), dict):
            params[section] = {**params[section], **values}
        else:
            params[section] = values
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture()
def perfkit_root(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A perfkit root in tmp: the repo's notebooks and corpus, params pointing at the tiny model."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "notebooks").mkdir()
    for notebook in (REPO / "notebooks").glob("*.ipynb"):
        shutil.copy(notebook, root / "notebooks")
    (root / "data").mkdir()
    (root / "data" / "corpus").symlink_to(REPO / "data" / "corpus")
    write_params(root, {"model": {"path": str(tiny_model_dir)}, "hardware": {"device": "cpu", "threads": 1}})
    monkeypatch.setenv("PERFKIT_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return root


@pytest.fixture()
def register_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Register a stage module written to tmp (PERFKIT_STAGES), visible to this process and to notebook kernels."""
    from perfkit import stages

    plugins = tmp_path / "stage-plugins"
    plugins.mkdir()

    def register(module: str, source: str) -> None:
        (plugins / f"{module}.py").write_text(source)
        monkeypatch.syspath_prepend(str(plugins))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plugins), str(REPO / "src")]))
        monkeypatch.setenv(stages.ENV, module)

    return register


def smoke_experiments(root: Path) -> Path:
    """Where a smoke run under `root` keeps its results (never the committed experiments/)."""
    from perfkit import config

    return config.experiments_dir(root, smoke=True)


CLAIMS_FILE = REPO / "data" / "claims.yaml"


def stage_checks(stage: str, path: Path = CLAIMS_FILE) -> list:
    """The checks of data/claims.yaml (or `path`) that `stage` measures, in file order."""
    from perfkit import claims

    return [c for claim in claims.load_claims(path) for c in claim.checks if c.stage == stage]


def judged(stage: str, summary: dict, path: Path = CLAIMS_FILE) -> dict:
    """`stage`'s checks judged on `summary` the way the report stage judges them, by check key ("C4:speed-up")."""
    from perfkit import claims
    from perfkit.stages.report import StageFigures, judge_claims

    verdicts = judge_claims(claims.load_claims(path), {stage: StageFigures(dict(summary), {})})
    return {r.key: r for v in verdicts for r in v.results if r.stage == stage}


def bench_script(name: str) -> ModuleType:
    """bench/<name>.py imported as a module (the bench scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
