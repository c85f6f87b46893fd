"""Results as data: what a stage saves comes back as the same objects, and nothing else can be rebuilt from a file."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perfkit import results
from perfkit.claims import Check
from perfkit.config import CostConfig
from perfkit.results import ResultFileError


@dataclass(frozen=True)
class Row:
    name: str
    seconds: tuple[float, ...]


@dataclass(frozen=True)
class Outer:
    rows: tuple[Row, ...]
    by_pair: dict[tuple[str, str], list[float]]
    odd_keys: dict[str, int]
    frame: pd.DataFrame
    cost: CostConfig
    path: Path
    array: np.ndarray
    nothing: None = None
    extras: dict[str, float] = field(default_factory=dict)


def _outer() -> Outer:
    return Outer(
        rows=(Row("a", (0.1, 0.2)), Row("b", ())),
        by_pair={("fp32", "b1"): [1.0, float("nan")], ("bf16", "b8"): [float("inf")]},
        odd_keys={"__tuple__": 1, "plain": 2},
        frame=pd.DataFrame({"x": [1, 2], "y": [1e-17, 1 / 3], "s": ["p", "q"], "ok": [True, False]}),
        cost=CostConfig(usd_per_hour=1.5),
        path=Path("/tmp/x"),
        array=np.arange(4, dtype=np.float32),
        extras={"v": np.float64(2.5)},
    )


def test_a_nested_result_round_trips_with_its_types(monkeypatch):
    allowed = results._allowed
    monkeypatch.setattr(results, "_allowed", lambda module: module == __name__ or allowed(module))  # this test's classes
    back = results.decode(json.loads(json.dumps(results.encode(_outer()))))
    assert isinstance(back, Outer) and back.rows == (Row("a", (0.1, 0.2)), Row("b", ()))
    assert set(back.by_pair) == {("fp32", "b1"), ("bf16", "b8")} and back.by_pair[("bf16", "b8")] == [math.inf]
    assert math.isnan(back.by_pair[("fp32", "b1")][1])
    assert back.odd_keys == {"__tuple__": 1, "plain": 2}  # a key shaped like a tag stays a key
    pd.testing.assert_frame_equal(back.frame, _outer().frame)  # dtypes and full float precision kept (1e-17, 1/3)
    assert back.cost == CostConfig(usd_per_hour=1.5) and back.path == Path("/tmp/x") and back.nothing is None
    assert back.array.dtype == np.float32 and back.array.tolist() == [0, 1, 2, 3]
    assert back.extras == {"v": 2.5} and type(back.extras["v"]) is float


def _report():
    from perfkit.stages.report import ReportResult

    return ReportResult(
        verdicts=(),
        consistency=(),
        stage_pages={"baseline": True},
        agreement=pd.DataFrame({"figure": ["C4:x"]}),
        precision=(),
        budgets=({"stage": "baseline", "wall s": 10.0, "budget s": 60.0, "over": False},),
    )


def test_save_and_load_through_the_file_and_a_missing_or_foreign_file_says_why(tmp_path):
    report = _report()
    path = results.save(report, tmp_path)
    back = results.load(tmp_path)
    assert back.stage_pages == report.stage_pages and back.budgets == report.budgets
    pd.testing.assert_frame_equal(back.agreement, report.agreement)
    body = json.loads(path.read_text())
    assert body["schema"] == results.SCHEMA and body["stage"] == "report"
    path.write_text(json.dumps(body | {"schema": 99}))
    with pytest.raises(ResultFileError, match=f"schema 99; this perfkit reads schema {results.SCHEMA}"):
        results.load(tmp_path)
    with pytest.raises(ResultFileError, match="no saved result"):
        results.load(tmp_path / "nowhere")


def test_a_schema_1_file_whose_result_has_checks_loads_without_them(tmp_path):
    """Schema 1 (stages judged their own claims) kept the claim checks in the result: they are dropped on load."""
    report = _report()
    path = results.save(report, tmp_path)
    body = json.loads(path.read_text())
    assert "checks" not in body["result"]["fields"]
    check = Check(claim="C1", label="l", stage="report", metric="m", claimed=2.0, unit="x")
    body["schema"] = 1
    body["result"]["fields"]["checks"] = results.encode((check,))
    path.write_text(json.dumps(body))
    back = results.load(tmp_path)
    assert type(back) is type(report) and not hasattr(back, "checks")
    assert back.stage_pages == {"baseline": True} and back.budgets == report.budgets


@pytest.mark.parametrize(
    "name",
    [
        "os:system",  # not an allowed module
        "perfkit.processes:subprocess.run",  # through an allowed module to a function elsewhere
        "perfkit.processes:spawn",  # a function of perfkit, not a class
        "perfkit.errors:PerfkitError",  # a class, but no dataclass
        "perfkit.config:Path",  # a dataclass-free class imported into perfkit
    ],
)
def test_a_file_naming_anything_but_a_perfkit_dataclass_is_refused(name):
    with pytest.raises(ResultFileError, match="only dataclasses of perfkit"):
        results.decode({"__dataclass__": name, "fields": {"args": ["true"]}})


def test_a_field_that_changed_since_the_file_was_written_is_named(tmp_path):
    path = results.save(_report(), tmp_path)
    body = json.loads(path.read_text())
    body["result"]["fields"]["renamed"] = body["result"]["fields"].pop("stage_pages")
    path.write_text(json.dumps(body))
    with pytest.raises(ResultFileError, match="written by other code than this"):
        results.load(tmp_path)


def test_what_cannot_be_rebuilt_is_refused_at_save_time():
    with pytest.raises(TypeError, match="cannot save a builtins.set"):
        results.encode({"a": {1, 2}})

    @dataclass
    class Derived:
        a: int
        b: int = field(init=False, default=0)

    with pytest.raises(TypeError, match="field outside __init__"):
        results.encode(Derived(1))
