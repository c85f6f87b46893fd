"""Every served stage's load runs: one time-slice table pair and figure for all, and `perfkit export` of each run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perfkit.load.interchange import file_name, read_result, write_vllm
from perfkit.load.results import RequestTiming, summarize
from perfkit.load.runner import LoadRun
from perfkit.stages import slices_view


def _run(tokens_per_slice: list[int], slice_s: float | None = 10.0) -> LoadRun:
    """One request sent at the start of each 10 s slice, its tokens arriving one per 0.5 s inside that slice."""
    rows = [
        RequestTiming(
            index=i,
            t_send=1000.0 + 10.0 * i,
            e2e_s=0.5 * n,
            status=200,
            ttft_s=0.5,
            output_tokens=n,
            prompt_tokens=8,
            done=True,
            chunk_s=tuple(0.5 * (k + 1) for k in range(n)),
        )
        for i, n in enumerate(tokens_per_slice)
    ]
    return LoadRun(tuple(rows), summarize(rows, mode="open", users=1, slice_s=slice_s), 60.0, Path("locust.log"))


STEADY = _run([10, 10, 10, 10, 10])
FALLING = _run([18, 16, 12, 8, 4, 2])
SHORT = _run([10, 10])  # two slices: no trend


def test_each_run_gets_its_slices_and_its_trend_or_the_reason_it_has_none() -> None:
    tables = slices_view.tables({"steady": STEADY, "falling": FALLING, "short": SHORT})
    slices, trends = tables["slices"], tables["trends"]
    # the window ends at the last answer, 5 s (steady) or 1 s (falling) into the last slice: that one is short or merged
    assert slices.groupby("run", sort=False).size().to_dict() == {"steady": 5, "falling": 5, "short": 2}
    assert slices[slices["run"] == "steady"]["tok_s"].tolist()[:4] == [1.0] * 4  # 10 tokens in each 10 s slice
    by_run = trends.set_index("run")
    assert by_run.loc["steady", "trend"] == "flat" and by_run.loc["falling", "trend"] == "falling"
    assert by_run.loc["falling", "ci_high"] < 0 and by_run.loc["short", "trend"] == slices_view.NO_TREND
    assert by_run.loc["short", "requests"] == 2


def test_a_stage_without_load_runs_or_without_slices_adds_no_table_or_figure() -> None:
    unsliced = {"saved before slices": _run([10, 10, 10], slice_s=None)}
    assert slices_view.tables({}) == {} and slices_view.figures({}) == {}
    assert slices_view.tables(unsliced) == {} and slices_view.figures(unsliced) == {}


def test_the_figure_draws_every_run_until_there_are_too_many_then_only_the_unsteady() -> None:
    import matplotlib.pyplot as plt

    few = slices_view.figures({"steady": STEADY, "falling": FALLING})["time_slices"]
    assert len(few.axes[0].lines) == 2 + 1  # a line per run and the 100% rule
    plt.close(few)
    many = {f"steady {i}": STEADY for i in range(slices_view.MAX_LINES)} | {"falling": FALLING}
    crowded = slices_view.figures(many)["time_slices"]
    assert [line.get_label() for line in crowded.axes[0].lines][:1] == ["falling"] and len(crowded.axes[0].lines) == 2
    plt.close(crowded)


def test_every_run_is_exported_under_its_own_file_and_reads_back_to_its_figures(tmp_path: Path) -> None:
    paths = write_vllm({"dynamic-b8 r1": STEADY, "optimized 0.25 req/s": FALLING}, tmp_path, model="m")
    assert [p.name for p in paths] == ["dynamic-b8_r1.json", "optimized_0.25_req_s.json"]
    back = read_result(json.loads(paths[1].read_text()))
    assert back.summary.throughput_tok_s == pytest.approx(FALLING.summary.throughput_tok_s)
    assert json.loads(paths[0].read_text())["date"] == "19700101-001640"  # dated by its first send (1000 s), not today
    with pytest.raises(ValueError, match="clashing"):
        write_vllm({"a b": STEADY, "a/b": STEADY}, tmp_path, model="m")
    assert file_name("  x  ") == "x.json"
