"""The report gathers the verdicts each stage wrote; it judges nothing itself."""

import json
from pathlib import Path

from conftest import smoke_experiments

from perfkit import claims
from perfkit.stages import report

REPO = Path(__file__).resolve().parents[1]
CLAIMS = REPO / "data" / "claims.yaml"


def test_every_seed_claim_is_in_the_table_once():
    ids = [c.id for c in claims.load_claims(CLAIMS)]
    assert ids == [f"C{i}" for i in range(1, 21)]


def test_every_check_names_a_registered_stage():
    from perfkit import stages

    registered = set(stages.registry()) | {"cache", "sharding", "distillation", "operations", "optimized"}
    assert {c.stage for claim in claims.load_claims(CLAIMS) for c in claim.checks} <= registered


def test_verdicts_come_from_the_stages_metrics_or_say_why_not(tmp_path):
    (tmp_path / "quantization").mkdir()
    written = {"status": claims.GATE_FAILED, "measured": 3.4, "claimed": 2.3, "why": "w", "kind": "relative", "unit": "x"}
    (tmp_path / "quantization" / "metrics.json").write_text(json.dumps({"summary": {"claims": {"C4:speed-up": written}}}))
    built = {"quantization", "transport", "baseline"}
    verdicts = {v.claim.id: v for v in report.gather(claims.load_claims(CLAIMS), tmp_path, built)}
    c4 = {r.label: r for r in verdicts["C4"].results}
    assert c4["speed-up"].status == claims.GATE_FAILED and c4["speed-up"].measured == 3.4
    assert c4["size saving"].status == claims.NOT_MEASURED and "run the stage again" in c4["size saving"].why
    assert all(r.status == claims.NOT_MEASURED and "has not run" in r.why for r in verdicts["C6"].results)
    assert all("not built yet" in r.why for r in verdicts["C5"].results)
    c17 = {r.label: r.status for r in verdicts["C17"].results}
    assert c17["GPU utilization"] == claims.NOT_MEASURABLE


def test_the_seed_overall_claims_break_littles_law():
    checks = report.littles_law_consistency(10, [("before", 2.8, 12), ("after", 0.7, 45), ("fine", 1.0, 5)])
    assert [c.consistent for c in checks] == [False, False, True]


def test_report_notebook_runs_through_the_stage_runner(perfkit_root):
    import shutil

    from perfkit.stage import run_stage

    shutil.copy(CLAIMS, perfkit_root / "data" / "claims.yaml")
    stage_dir = smoke_experiments(perfkit_root) / "quantization"
    stage_dir.mkdir(parents=True)
    entry = {"status": claims.HOLDS, "measured": 2.5, "claimed": 2.3, "why": "w", "kind": "relative", "unit": "x"}
    (stage_dir / "metrics.json").write_text(json.dumps({"summary": {"claims": {"C4:speed-up": entry}}}))
    summary = json.loads(run_stage("report", smoke=True, root=perfkit_root).read_text())["summary"]
    assert summary["claims_total"] == 20 and summary["inconsistent_claim_sets"] == 2
    assert summary["claim_status"]["C17"] == claims.NOT_MEASURED  # batching has not run
    import pandas as pd

    table = pd.read_csv(smoke_experiments(perfkit_root) / "report" / "claims.csv")
    row = table[(table["claim"] == "C4") & (table["check"] == "speed-up")].iloc[0]
    assert row["status"] == claims.HOLDS and row["measured"] == 2.5
