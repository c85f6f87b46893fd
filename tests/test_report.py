"""The report judges every claim on the figures its stage saved; a stage judges nothing itself."""

import json
from pathlib import Path

import pandas as pd
from conftest import smoke_experiments

from perfkit import budgets, claims, history
from perfkit.stages import report
from perfkit.stages.report import StageFigures

REPO = Path(__file__).resolve().parents[1]
CLAIMS = REPO / "data" / "claims.yaml"


def _verdicts(figures: dict[str, StageFigures]) -> dict[str, claims.ClaimVerdict]:
    return {v.claim.id: v for v in report.judge_claims(claims.load_claims(CLAIMS), figures)}


def _results(verdict: claims.ClaimVerdict) -> dict[str, claims.ClaimResult]:
    return {r.label: r for r in verdict.results}


def test_every_seed_claim_is_in_the_table_once():
    ids = [c.id for c in claims.load_claims(CLAIMS)]
    assert ids == [f"C{i}" for i in range(1, 21)]


def test_every_check_names_a_registered_stage():
    from perfkit import stages

    assert {c.stage for claim in claims.load_claims(CLAIMS) for c in claim.checks} <= set(stages.registry())


def test_a_stage_without_a_result_leaves_its_checks_not_measured_with_the_reason():
    figures = {"transport": StageFigures(None, {}, "the transport stage has no readable result: no saved result")}
    verdicts = _verdicts(figures)
    assert all(r.status == claims.NOT_MEASURED and "no saved result" in r.why for r in verdicts["C6"].results)
    assert all(r.status == claims.NOT_MEASURED and "no sharding stage" in r.why for r in verdicts["C5"].results)
    assert _results(verdicts["C17"])["GPU utilization (NVML)"].status == claims.NOT_MEASURABLE


def test_c9_is_judged_on_the_short_requests_not_the_submit_time():
    # Jobs on the queue slowed the short requests 6x while a submit took 3 ms: the claim does not hold.
    summary = {
        "short_ttft_p50_queued_vs_none": 6.0,
        "short_ttft_p50_queued_vs_none_ci_low": 4.0,
        "short_ttft_p50_queued_vs_none_ci_high": 8.0,
        "short_ttft_ms_p50_queued": 6000.0,
        "job_submit_ms_tail": 3.0,
        "job_submit_count": 120,
        "job_submit_reliable": True,
    }
    c9 = _verdicts({"operations": StageFigures(summary, {})})["C9"]
    checks = _results(c9)
    assert checks["job submit p99"].status == claims.HOLDS
    assert checks["short requests' TTFT p50 with long jobs queued, over the same load without jobs"].status == claims.FAILS
    assert c9.status == claims.FAILS


def test_c9_submit_time_from_a_few_submissions_is_not_tested():
    summary = {"short_ttft_p50_queued_vs_none": 1.02, "job_submit_ms_tail": 3.0, "job_submit_count": 4, "job_submit_reliable": False}
    checks = _results(_verdicts({"operations": StageFigures(summary, {})})["C9"])
    submit = checks["job submit p99"]
    assert submit.status == claims.NOT_TESTED and "max of 4 submissions" in submit.why and "100" in submit.why


def test_c16_with_too_small_a_budget_is_not_tested_here_with_the_tokens_it_would_need():
    summary = {
        "student": "7L-forward_kl",
        "accuracy_kept_pct": 50.0,
        "accuracy_kept_pct_ci_low": 45.0,
        "accuracy_kept_pct_ci_high": 55.0,
        "speedup_vs_fp32": 4.1,
        "speedup_vs_bf16": 4.0,
        "size_ratio_non_embedding": 4.29,
        "size_ratio_total": 2.6,
        "target_size_ratio": 4.3,
        "at_target_size_ratio": True,
        "kept_target_tested": False,
        "tokens_trained": 30720,
        "tokens_for_89pct_kept": 4.5e7,
        "hours_for_target_kept": 34.0,
    }
    c16 = _verdicts({"distillation": StageFigures(summary, {})})["C16"]
    kept = _results(c16)["accuracy kept"]
    assert kept.status == claims.NOT_TESTED and "4.5e+07 tokens" in kept.why and "34 h" in kept.why
    assert kept.measured == 50.0  # shown, not judged
    assert _results(c16)["speed-up over the fp32 teacher"].status == claims.HOLDS  # at the claim's ratio: tested
    assert c16.status == claims.NOT_TESTED  # not a "does not hold": the accuracy was never tested


def test_c20_with_a_failed_quality_gate_is_not_a_plain_hold():
    summary = {
        "docs_per_min_gain": 5.0,
        "docs_per_min_gain_ci_low": 4.6,
        "docs_per_min_gain_ci_high": 5.4,
        "case_study_similarity_gate_passed": False,
        "case_study_is_service": True,
    }
    c20 = _verdicts({"optimized": StageFigures(summary, {})})["C20"]
    assert c20.status == claims.GATE_FAILED


def test_c20_from_documents_one_after_another_is_not_tested():
    summary = {
        "docs_per_min_gain": 5.0,
        "case_study_similarity_gate_passed": True,
        "case_study_is_service": False,
        "case_study_documents": 2,
        "case_study_concurrent_documents": 1,
    }
    assert _verdicts({"optimized": StageFigures(summary, {})})["C20"].status == claims.NOT_TESTED


def test_claims_derived_from_another_are_listed_under_it_and_not_counted():
    verdicts = report.judge_claims(claims.load_claims(CLAIMS), {})
    result = report.ReportResult(tuple(verdicts), (), {}, pd.DataFrame(), (), ())
    assert len(result.counted()) == 18 and result.summary()["claims_derived"] == 2
    assert sum(result.counts().values()) == 18
    listed = list(dict.fromkeys(result.claim_table()["claim"]))
    at = listed.index("C11")
    assert listed[at + 1 : at + 3] == ["C14 (from C11)", "C15 (from C11)"]


def test_precision_flags_a_wide_interval_with_the_rounds_that_would_tighten_it():
    summary = {
        "throughput_gain_pct": 400.0,
        "throughput_gain_pct_ci_low": 200.0,
        "throughput_gain_pct_ci_high": 600.0,
        "latency_reduction_pct": 80.0,
        "latency_reduction_pct_ci_low": 78.0,
        "latency_reduction_pct_ci_high": 82.0,
        "rounds": 3,
    }
    figures = {"optimized": StageFigures(summary, {})}
    judged = [r for v in report.judge_claims(claims.load_claims(CLAIMS), figures) for r in v.results]
    rows = {r["figure"]: r for r in history.precision_rows(judged, {"optimized": 3}, 0.15)}
    wide, narrow = rows["C11:throughput gain"], rows["C10:mean latency reduction"]
    assert not wide["within"] and wide["rounds needed"] == 34  # ±50% over 3 rounds: 3 x (0.5 / 0.15)^2 = 33.3
    assert narrow["within"] and narrow["rounds needed"] is None


def test_a_stage_over_its_budget_is_named():
    provenances = {"optimized": {"wall_s": 942.0, "budget_s": 900}, "baseline": {"wall_s": 80.0, "budget_s": 100}}
    rows = {r["stage"]: r["over"] for r in budgets.budget_rows(provenances)}
    assert rows == {"optimized": True, "baseline": False}  # no start times: no whole-run row


def test_the_whole_run_is_timed_from_the_first_start_to_the_last_end_when_the_stages_ran_as_one():
    def stage(started: str, wall: float, **more) -> dict:
        return {"started_at": started, "wall_s": wall, "budget_s": 6000} | more

    one = {"baseline": stage("2026-12-07T05:00:00+00:00", 100.0), "optimized": stage("2026-12-07T05:02:00+00:00", 5300.0)}
    rows = {r["stage"]: r for r in budgets.budget_rows(one)}
    assert rows[budgets.WHOLE_RUN]["wall s"] == 5420.0 and rows[budgets.WHOLE_RUN]["over"] is True  # 90 min 20 s
    apart = one | {"optimized": stage("2026-12-08T05:02:00+00:00", 60.0)}  # rerun a day later: no run to time
    assert budgets.WHOLE_RUN not in {r["stage"] for r in budgets.budget_rows(apart)}
    smoke = one | {"baseline": stage("2026-12-07T05:00:00+00:00", 100.0, smoke=True)}
    assert budgets.WHOLE_RUN not in {r["stage"] for r in budgets.budget_rows(smoke)}  # 90 minutes bound the default run


def test_the_seed_overall_claims_break_littles_law():
    checks = report.littles_law_consistency(10, [("before", 2.8, 12), ("after", 0.7, 45), ("fine", 1.0, 5)])
    assert [c.consistent for c in checks] == [False, False, True]


def test_report_notebook_runs_through_the_stage_runner(perfkit_root):
    import shutil

    from perfkit.stage import run_stage

    shutil.copy(CLAIMS, perfkit_root / "data" / "claims.yaml")
    summary = json.loads(run_stage("report", smoke=True, root=perfkit_root).read_text())["summary"]
    assert summary["claims_total"] == 18 and summary["claims_derived"] == 2 and summary["inconsistent_claim_sets"] == 2
    assert summary["claim_status"]["C17"] == claims.NOT_MEASURED  # batching has not run
    table = pd.read_csv(smoke_experiments(perfkit_root) / "report" / "claims.csv")
    assert set(table["status"]) <= {claims.NOT_MEASURED, claims.NOT_MEASURABLE}
    assert not (smoke_experiments(perfkit_root) / "history.json").exists()  # nothing measured: no run to record


TOY_STAGE = """
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from perfkit.stages.base import StageResult, StageSpec

STAGE = StageSpec(name="toy", title="Toy", run="toy_report_stage:run")
SUMMARIES: list[float] = []  # one entry per summary() computed


@dataclass(frozen=True)
class ToyResult(StageResult):
    spec = STAGE
    speedup: float

    def variants(self) -> tuple[float, ...]:
        return (self.speedup,)

    def summary(self) -> dict[str, Any]:
        SUMMARIES.append(self.speedup)
        return {"speedup": self.speedup}

    def tables(self) -> dict[str, Any]:
        import pandas as pd

        return {"rows": pd.DataFrame({"speedup": [self.speedup]})}

    def figures(self) -> dict[str, Any]:
        return {}

    def conclusion(self) -> str:
        return f"The toy ran {self.speedup:g}x as fast."


def run(cfg: Any) -> ToyResult:
    return ToyResult(3.0)
"""
TOY_CLAIMS = """claims:
  - {id: C1, area: toy, text: t, checks: [{label: toy speed-up, stage: toy, metric: speedup, claimed: 2, unit: x}]}
"""


def _toy_root(tmp_path: Path, register_stage, monkeypatch) -> tuple[Path, object]:
    """A checkout whose one stage (toy) saved a full run's result, and whose history holds one earlier run."""
    import importlib

    from perfkit import history, results

    root = tmp_path / "checkout"
    (root / "data").mkdir(parents=True)
    (root / "params.yaml").write_text("{}\n")
    (root / "data" / "claims.yaml").write_text(TOY_CLAIMS)
    register_stage("toy_report_stage", TOY_STAGE)
    monkeypatch.setenv("PERFKIT_ROOT", str(root))
    monkeypatch.setenv("PERFKIT_TRACKING", "off")
    toy = importlib.import_module("toy_report_stage")
    prov = {
        "started_at": "2026-12-06T10:00:00+00:00",
        "git_commit": "abcdef1234567",
        "cpu_model": "AMD EPYC",
        "smoke": False,
        "git_dirty": False,
    }
    results.save(toy.ToyResult(3.0, provenance=prov), root / "experiments" / "toy")
    earlier = {
        "run": "earlier",
        "date": "2026-12-05T10:00:00+00:00",
        "commits": ["abcdef1"],
        "cpu": ["AMD EPYC"],
        "git_dirty": False,
        "smoke": False,
        "figures": {
            "C1:toy speed-up": {"stage": "toy", "value": 2.5, "low": None, "high": None, "unit": "x", "claimed": 2.0, "status": "holds"}
        },
    }
    history.record(root / "experiments" / history.HISTORY_FILE, earlier)
    toy.SUMMARIES.clear()
    return root, toy


def test_perfkit_site_renders_the_committed_results_and_leaves_the_history_as_it_was(tmp_path, register_stage, monkeypatch, capsys):
    from perfkit import config, history
    from perfkit.__main__ import main

    root, _ = _toy_root(tmp_path, register_stage, monkeypatch)
    path = root / "experiments" / history.HISTORY_FILE
    committed = path.read_bytes()

    assert main(["site"]) == 0
    assert path.read_bytes() == committed  # the site re-renders; it records no run
    printed = json.loads(capsys.readouterr().out)
    assert printed["site"] == str(root / "experiments" / "report" / "site" / "index.html")
    index = (root / "experiments" / "report" / "site" / "index.html").read_text()
    assert "The toy ran 3x as fast." in index and "2026-12-05 10:00 abcdef1 AMD EPYC" in index  # the earlier run beside it

    # The stage's own run (dvc repro) is the one that records this run: the fixture has a run to record.
    result = report.run(config.load("report", root=root))
    assert [r["run"] for r in history.load(path)][0] == "earlier" and len(history.load(path)) == 2
    assert "Run to run (1 previous runs shown)" in result.conclusion()


def test_the_report_computes_each_stage_summary_once(tmp_path, register_stage, monkeypatch):
    from perfkit import config

    root, toy = _toy_root(tmp_path, register_stage, monkeypatch)
    result = report.run(config.load("report", root=root), record=False)
    checks = {r.key: r for v in result.verdicts for r in v.results}
    assert checks["C1:toy speed-up"].measured == 3.0 and checks["C1:toy speed-up"].status == claims.HOLDS
    assert "The toy ran 3x as fast." in (root / "experiments" / "report" / "site" / "toy.html").read_text()
    assert toy.SUMMARIES == [3.0]  # judged, recorded and rendered from the one summary the report read
