import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_environment_yml_pins_the_same_packages_as_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(deps)


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "make test" in (REPO / "README.md").read_text()


def test_every_dvc_stage_with_a_notebook_follows_the_contract():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if name == "prepare":
            assert stage["deps"] == ["src/perfkit/prepare.py"]
            continue
        assert stage["cmd"] == f"python -m perfkit stage {name}"
        assert f"notebooks/{name}.ipynb" in stage["deps"]
        outs = [next(iter(o)) for o in stage["outs"]]
        assert outs[:2] == [f"experiments/{name}/{name}.ipynb", f"experiments/{name}/{name}.html"]
        assert all(not o.startswith("notebooks/") for o in outs)  # a notebook is never both a dep and an out
        assert [next(iter(m)) for m in stage["metrics"]] == [f"experiments/{name}/metrics.json"]
        assert not any(str(d).endswith(".html") for d in stage["deps"])
        assert (REPO / "notebooks" / f"{name}.ipynb").is_file()


def test_committed_notebooks_have_no_outputs():
    import nbformat

    for path in (REPO / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "perfkit", path
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), path
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path
