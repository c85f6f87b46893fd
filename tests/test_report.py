import json
from pathlib import Path

import pytest

from perfkit import report

REPO = Path(__file__).resolve().parents[1]
CLAIMS = REPO / "data" / "claims.yaml"


def test_every_seed_claim_is_in_the_table_once():
    ids = [c.id for c in report.load_claims(CLAIMS)]
    assert ids == [f"C{i}" for i in range(1, 21)]


def test_checks_hold_fail_or_are_unmeasured_from_metrics(tmp_path):
    (tmp_path / "quantization").mkdir()
    (tmp_path / "quantization" / "metrics.json").write_text(
        json.dumps({"summary": {"int8_dynamic_speedup": 1.4, "int8_dynamic_size_saving_pct": 58.0, "verdict": "v"}})
    )
    verdicts = {(v.claim, v.label): v for v in report.check_claims(report.load_claims(CLAIMS), tmp_path)}
    assert verdicts[("C4", "speed-up")].status == report.FAILS and verdicts[("C4", "speed-up")].why == "v"
    assert verdicts[("C4", "size saving")].status == report.HOLDS  # 58 >= 60 x 0.95
    assert verdicts[("C4", "top-1 agreement")].status == report.UNMEASURED
    assert verdicts[("C4", "top-1 agreement")].why == "summary.int8_dynamic_top1_agreement_pct absent from quantization/metrics.json"
    assert verdicts[("C6", "latency reduction at the largest size")].status == report.UNMEASURED
    assert "has not run" in verdicts[("C6", "latency reduction at the largest size")].why
    assert verdicts[("C3", "—")].status == report.UNMEASURED and "Kubernetes" in verdicts[("C3", "—")].why


def test_claim_checks_are_keyed_by_metric_and_empty_without_checks():
    c4 = report.claim_checks(CLAIMS, "C4")
    assert c4["summary.int8_dynamic_speedup"].claimed == 2.3 and len(c4) == 3
    assert report.claim_checks(CLAIMS, "C3") == {} and report.claim_checks(CLAIMS, "C99") == {}


@pytest.mark.parametrize(("rule", "measured", "holds"), [("at_least", 2.0, True), ("at_least", 1.7, False),
                                                          ("at_most", 5.4, True), ("at_most", 5.6, False)])
def test_rules_apply_the_tolerance(rule, measured, holds):
    claimed = 2.0 if rule == "at_least" else 5.0
    check = report.Check("x", "s", "summary.x", claimed, rule=rule, tolerance=0.1)
    assert report.judge(check, measured) is holds


def test_the_seed_overall_claims_break_littles_law():
    built = report.build(CLAIMS, REPO / "nonexistent")
    by_label = {c.claims: c.consistent for c in built.consistency}
    assert by_label == {"C10 before + C11 before": False, "C10 after + C11 after": False}
    summary = built.metrics()["summary"]
    assert summary["inconsistent_claim_sets"] == 2 and summary["checks_hold"] == 0
    assert "Little's law" in summary["verdict"]


def test_report_notebook_runs_through_the_stage_runner(perfkit_root):
    import shutil

    from perfkit.stage import run_stage

    shutil.copy(CLAIMS, perfkit_root / "data" / "claims.yaml")
    stage_dir = perfkit_root / "experiments" / "quantization"
    stage_dir.mkdir(parents=True)
    (stage_dir / "metrics.json").write_text(json.dumps({"summary": {"int8_dynamic_speedup": 2.5}}))
    metrics = json.loads(run_stage("report", smoke=True, root=perfkit_root).read_text())
    assert metrics["C4:speed-up"] == {"claimed": 2.3, "measured": 2.5, "status": report.HOLDS}
    html = (perfkit_root / "experiments" / "report" / "report.html").read_text()
    assert "Little" in html and "quantization: not run yet" in html
