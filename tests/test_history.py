"""Run-to-run history of the claim figures: what a run records, how the file keeps it, and what the
agreement table says about two fixture runs whose expected verdicts are fixed here by hand."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from perfkit import history
from perfkit.claims import ClaimResult, Estimate, Kind


def _result(
    claim: str,
    label: str,
    stage: str,
    measured: float | None,
    low: float | None = None,
    high: float | None = None,
    *,
    kind: Kind = "relative",
    status: str = "holds",
    claimed: float = 2.0,
    unit: str = "x",
) -> ClaimResult:
    return ClaimResult(claim, label, stage, kind, claimed, unit, "at_least", 0.1, measured, low, high, status, "fixture")


def _provenance(started: str, *, commit: str = "8321de663297880d", cpu: str = "AMD EPYC", smoke: bool = False, dirty: bool = False) -> dict:
    return {"git_commit": commit, "cpu_model": cpu, "started_at": started, "smoke": smoke, "git_dirty": dirty}


RESULTS = [
    _result("C4", "speed-up", "quantization", 3.9, 0.43, 7.38, status="inconclusive", claimed=2.3),
    _result("C4", "size saving", "quantization", 53.9, unit="%", claimed=60, status="does not hold"),
    _result("C1", "latency", "baseline", 2.1, kind="absolute", status="different test bed"),
    _result("C9", "speed-up", "optimized", None, status="not measured yet"),
    _result("C7", "tokens/s", "optimized", 5.72, 4.60, 6.83),
]
PROVENANCE = {
    "quantization": _provenance("2026-12-05T20:28:24+00:00"),
    "optimized": _provenance("2026-12-05T21:15:48+00:00", commit="741f2a3000", dirty=True),
    "baseline": _provenance("2026-12-05T20:26:00+00:00"),
    "report": _provenance("2026-12-05T21:42:00+00:00"),
}


def test_entry_keeps_relative_measured_figures_with_run_facts():
    run = history.entry(RESULTS, PROVENANCE)
    assert list(run["figures"]) == ["C4:speed-up", "C4:size saving", "C7:tokens/s"]
    assert run["figures"]["C4:speed-up"] == {
        "stage": "quantization",
        "value": 3.9,
        "low": 0.43,
        "high": 7.38,
        "unit": "x",
        "claimed": 2.3,
        "status": "inconclusive",
    }
    assert run["figures"]["C4:size saving"]["low"] is None
    # only the stages that measured a kept figure describe the run (not baseline's absolute one, not the report)
    assert run["date"] == "2026-12-05T21:15:48+00:00"
    assert run["commits"] == ["741f2a3", "8321de6"]
    assert run["cpu"] == ["AMD EPYC"]
    assert run["git_dirty"] is True and run["smoke"] is False
    assert len(run["run"]) == 12


def test_entry_id_is_stable_and_follows_the_start_times():
    first = history.entry(RESULTS, PROVENANCE)["run"]
    report_again = {**PROVENANCE, "report": _provenance("2026-12-06T09:00:00+00:00")}
    assert history.entry(list(reversed(RESULTS)), report_again)["run"] == first
    rerun = {**PROVENANCE, "optimized": _provenance("2026-12-06T10:00:00+00:00")}
    assert history.entry(RESULTS, rerun)["run"] != first


def _run(run: str, date: str, figures: dict, *, cpu: tuple[str, ...] = ("AMD EPYC",), smoke: bool = False) -> dict:
    return {"run": run, "date": date, "commits": ["8321de6"], "cpu": list(cpu), "git_dirty": False, "smoke": smoke, "figures": figures}


def _fig(value: float, low: float | None = None, high: float | None = None, status: str = "holds", unit: str = "x") -> dict:
    return {"stage": "optimized", "value": value, "low": low, "high": high, "unit": unit, "claimed": 2.0, "status": status}


def test_record_replaces_the_same_run_appends_others_sorted_and_skips_smoke(tmp_path: Path):
    path = tmp_path / "experiments" / history.HISTORY_FILE
    assert history.load(path) == []
    history.record(path, _run("b", "2026-12-05T21:00:00+00:00", {"C7:tokens/s": _fig(5.0)}))
    history.record(path, _run("a", "2026-12-04T21:00:00+00:00", {"C7:tokens/s": _fig(4.0)}))
    runs = history.record(path, _run("b", "2026-12-05T21:00:00+00:00", {"C7:tokens/s": _fig(5.5)}))
    assert [r["run"] for r in runs] == ["a", "b"]
    assert runs[1]["figures"]["C7:tokens/s"]["value"] == 5.5
    assert history.load(path) == runs
    text = path.read_text()
    assert text.startswith('[\n {\n  "commits"')  # indent 1, sorted keys
    after_smoke = history.record(path, _run("s", "2026-12-06T21:00:00+00:00", {"C7:tokens/s": _fig(1.0)}, smoke=True))
    assert [r["run"] for r in after_smoke] == ["a", "b"]
    assert path.read_text() == text
    assert [p.name for p in path.parent.iterdir()] == [history.HISTORY_FILE]  # no temp file left


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ("{not json", "not JSON"),
        ('{"run": "a"}', "a list of runs"),
        ('[{"run": "a", "date": "2026-12-05"}]', "run 0 lacks commits"),
        (
            '[{"run": "a", "date": "yesterday", "commits": [], "cpu": [], "git_dirty": false, "smoke": false, "figures": {}}]',
            "not an ISO time",
        ),
    ],
)
def test_load_refuses_a_malformed_file_naming_path_and_problem(tmp_path: Path, body: str, what: str):
    path = tmp_path / history.HISTORY_FILE
    path.write_text(body)
    with pytest.raises(ValueError, match=what) as info:
        history.load(path)
    assert str(path) in str(info.value)


def test_agreement_flags_disagreement_other_cpu_and_status_change(tmp_path: Path):
    path = tmp_path / history.HISTORY_FILE
    history.record(
        path,
        _run(
            "old",
            "2026-11-29T16:04:41+00:00",
            {
                "C7:tokens/s": _fig(3.0, 2.5, 3.5, status="does not hold"),  # apart from today's 4.6-6.83
                "C4:size saving": _fig(50.0, 45.0, 55.0, unit="%"),  # overlaps today's 48-58
            },
            cpu=("Intel(R) Xeon(R) Processor",),
        ),
    )
    history.record(path, _run("mid", "2026-12-04T21:14:00+00:00", {"C7:tokens/s": _fig(5.5, 5.27, 5.77)}))
    history.record(path, _run("later", "2026-12-07T10:00:00+00:00", {"C7:tokens/s": _fig(9.0, 8.0, 10.0)}))
    current = _run(
        "today",
        "2026-12-05T21:15:48+00:00",
        {
            "C7:tokens/s": _fig(5.72, 4.60, 6.83),
            "C4:size saving": _fig(53.0, 48.0, 58.0, unit="%"),
            "C4:speed-up": _fig(3.9),  # no interval, no earlier run
        },
    )
    table = history.agreement(history.load(path), current).set_index("figure")
    old, mid = "2026-11-29 16:04 8321de6 Intel Xeon", "2026-12-04 21:14 8321de6 AMD EPYC"
    assert list(table.columns) == ["unit", "today", mid, old, "overlaps", "non_overlapping_with", "other_cpu", "status_change"]
    assert history.previous_runs(table) == [mid, old]  # newest first; "later" ran after today's run

    tokens = table.loc["C7:tokens/s"]
    assert tokens["today"] == "5.72x (95% CI 4.6–6.83)"
    assert tokens[mid] == "5.5x (95% CI 5.27–5.77)" and tokens[old] == "3x (95% CI 2.5–3.5)"
    assert tokens["overlaps"] is False
    assert tokens["non_overlapping_with"] == old
    assert tokens["other_cpu"] == old
    assert tokens["status_change"] == ""  # mid, the most recent, held as today does

    saving = table.loc["C4:size saving"]
    assert saving["overlaps"] is True and saving["non_overlapping_with"] == ""
    assert saving[mid] == "—"

    speed = table.loc["C4:speed-up"]
    assert speed["overlaps"] is None and speed["other_cpu"] == "" and speed[old] == "—"

    changed = history.agreement([r for r in history.load(path) if r["run"] != "mid"], current).set_index("figure")
    assert changed.loc["C7:tokens/s", "status_change"] == f"does not hold → holds ({old})"
    alone = history.agreement(history.load(path), current, previous=0)
    assert (
        list(alone.columns)
        == list(history.FIXED_COLUMNS)
        == ["figure", "unit", "today", "overlaps", "non_overlapping_with", "other_cpu", "status_change"]
    )
    assert history.previous_runs(alone) == []


def test_agreement_leaves_out_the_same_run():
    current = _run("same", "2026-12-05T21:15:48+00:00", {"C7:tokens/s": _fig(5.72, 4.60, 6.83)})
    earlier_copy = {**current, "date": "2026-12-01T00:00:00+00:00"}
    table = history.agreement([earlier_copy], current)
    assert list(table.columns) == ["figure", "unit", "today", "overlaps", "non_overlapping_with", "other_cpu", "status_change"]
    assert table.loc[0, "overlaps"] is None


def test_precision_and_rounds_needed():
    share, ok = history.precision(Estimate(5.72, 4.60, 6.83), 2.3)
    assert share == pytest.approx(0.1949, abs=1e-4) and ok is False
    assert history.precision(Estimate(2.0, 1.9, 2.1), 1.8) == (pytest.approx(0.05), True)  # |value| 2 > claimed 1.8
    near_zero, ok = history.precision(Estimate(0.5, -3.0, 4.0), 60)  # half-width 3.5 on the claim's 60
    assert near_zero == pytest.approx(3.5 / 60) and ok is True
    assert history.precision(Estimate(0.5, -3.0, 4.0), None)[1] is False  # on 0.5 alone: 7x the value
    assert history.precision(Estimate(5.72), 2.3) == (None, True)
    assert history.rounds_needed(0.3, 3) == 12
    assert history.rounds_needed(0.33, 2, limit=0.03) == 242
    assert history.rounds_needed(0.151, 3) == 4  # ceil(3.04) = 4, and more than the 3 already run
    assert history.rounds_needed(0.1, 3) == 3


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True, capture_output=True)


def _metrics(root: Path, stage: str, key: str, started: str, measured: float, cpu: str = "AMD EPYC") -> None:
    out = root / "experiments" / stage
    out.mkdir(parents=True, exist_ok=True)
    claims = {
        key: {
            "kind": "relative",
            "claimed": 2.0,
            "unit": "x",
            "measured": measured,
            "low": measured - 1,
            "high": measured + 1,
            "status": "holds",
            "why": "fixture",
        },
        "C1:latency": {
            "kind": "absolute",
            "claimed": 2.8,
            "unit": "s",
            "measured": 9.0,
            "low": None,
            "high": None,
            "status": "different test bed",
            "why": "fixture",
        },
    }
    provenance = _provenance(started, commit="abcdef1234567", cpu=cpu)
    (out / "metrics.json").write_text(json.dumps({"summary": {"claims": claims, "provenance": provenance}}))


def test_backfill_reads_each_revision_like_entry(tmp_path: Path):
    _git(tmp_path, "init", "-q")
    _metrics(tmp_path, "optimized", "C7:tokens/s", "2026-11-29T16:04:41+00:00", 5.0, cpu="Intel(R) Xeon(R) Processor")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "first")
    _metrics(tmp_path, "optimized", "C7:tokens/s", "2026-12-05T21:15:48+00:00", 6.0)
    _metrics(tmp_path, "batching", "C3:speed-up", "2026-12-05T20:50:00+00:00", 3.8)
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "second")

    first, second = history.backfill(tmp_path, ["HEAD~1", "HEAD"], ["optimized", "batching", "sharding"])
    assert first["date"] == "2026-11-29T16:04:41+00:00" and first["cpu"] == ["Intel(R) Xeon(R) Processor"]
    assert first["figures"] == {
        "C7:tokens/s": {"stage": "optimized", "value": 5.0, "low": 4.0, "high": 6.0, "unit": "x", "claimed": 2.0, "status": "holds"}
    }
    assert second["date"] == "2026-12-05T21:15:48+00:00" and second["commits"] == ["abcdef1"]
    assert {k: (f["stage"], f["value"]) for k, f in second["figures"].items()} == {
        "C7:tokens/s": ("optimized", 6.0),
        "C3:speed-up": ("batching", 3.8),
    }
    assert first["run"] != second["run"]
    # the same record entry() builds from the same verdicts and provenance
    assert first == history.entry(
        [_result("C7", "tokens/s", "optimized", 5.0, 4.0, 6.0), _result("C1", "latency", "optimized", 9.0, kind="absolute")],
        {"optimized": _provenance("2026-11-29T16:04:41+00:00", commit="abcdef1234567", cpu="Intel(R) Xeon(R) Processor")},
    )
    with pytest.raises(ValueError, match="no commit"):
        history.backfill(tmp_path, ["nope"], ["optimized"])
