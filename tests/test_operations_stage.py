"""The operations stage: its params match the committed rules and manifests; its verdicts follow the numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from perfkit.autoscaling import HpaPolicy, Trace, compare
from perfkit.monitoring import rules
from perfkit.monitoring.prometheus import availability
from perfkit.stages.operations import OperationsConfig
from perfkit.stages.operations.alerts import AlertRun, thresholds
from perfkit.stages.operations.autoscale import Autoscaling, measured_inputs
from perfkit.stages.operations.common import Percentiles
from perfkit.stages.operations.longjobs import JobVariant
from perfkit.stages.operations.neighbours import NeighbourRun

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = OperationsConfig()


def test_committed_rules_and_hpa_are_the_params_defaults():
    params = OperationsConfig(**yaml.safe_load((ROOT / "params.yaml").read_text())["operations"])
    assert params == DEFAULTS
    assert (ROOT / "monitoring" / "alerts.yml").read_text() == rules.render(thresholds(DEFAULTS))
    hpa = yaml.safe_load((ROOT / "deploy" / "k8s" / "hpa.yaml").read_text())["spec"]
    metrics = {m["type"]: m for m in hpa["metrics"]}
    assert metrics["Resource"]["resource"]["target"]["averageUtilization"] == DEFAULTS.hpa_target_cpu_pct
    assert float(metrics["Pods"]["pods"]["target"]["averageValue"]) == DEFAULTS.hpa_target_queue
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (DEFAULTS.hpa_min_replicas, DEFAULTS.hpa_max_replicas)
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == HpaPolicy().scale_down_window_s


def test_autoscaling_reads_the_baseline_capacity_and_cold_start(tmp_path):
    metrics = tmp_path / "metrics.json"
    assert measured_inputs(metrics, DEFAULTS)[:2] == (DEFAULTS.capacity_rps, DEFAULTS.cold_start_s)
    metrics.write_text(json.dumps({"summary": {"throughput_rps": 0.7, "cold_start_s": 3.9}}))
    assert measured_inputs(metrics, DEFAULTS)[:2] == (0.7, 3.9)


def _p(p99: float, n: int = 120) -> Percentiles:
    return Percentiles(n, p99 / 2, p99, p99 * 0.9, p99 * 1.1, p99 * 1.5)


def _neighbour(variant: str, p99: float, burst_429: int = 0, with_header: int = 0, alive: bool = True) -> NeighbourRun:
    return NeighbourRun(variant, "off", "15 requests/s, burst 30", _p(p99), _p(p99 / 2), 120, 0, 50, 50 - burst_429,
                        burst_429, 0, with_header, alive, 600.0, 610.0)


def _result(neighbours, alerts=None, jobs=()):
    from perfkit.claims import checks_for
    from perfkit.stages.operations.result import OperationsResult

    trace = Trace((1, 2, 4, 2), day_s=3600)
    fixed, hpa = compare(trace, 2.0, 5.0, HpaPolicy(), 5)
    auto = Autoscaling(fixed, hpa, 5, 2.0, 5.0, "params")
    checks = checks_for(ROOT / "data" / "claims.yaml", "operations")
    return OperationsResult(3.0, alerts, tuple(jobs), tuple(neighbours), auto, (1.0, 1.0), 200.0, 1.5, checks)


def _alerts(fire_at: float, false_at: float | None = None) -> AlertRun:
    firing = {rules.ERROR_ALERT: [(fire_at, 80.0)], rules.QUEUE_ALERT: []}
    if false_at is not None:
        firing[rules.ERROR_ALERT].insert(0, (false_at, false_at + 2))
    return AlertRun("ok", capacity_rps=2.5, queue_cap=75, max_queue_depth=60, bound_s=13, phases=(0, 30, 70, 100),
                    firing=firing, series={"queue depth": [(0, 0)], "error ratio": [(0, 0)]}, thresholds=rules.Thresholds(),
                    first_error_s=33.0)


def test_the_burst_survives_only_when_the_bucket_refuses_it_with_retry_after_and_nothing_fell_over():
    good = _result([_neighbour("alone", 1000), _neighbour("fair", 1200), _neighbour("fair+bucket", 1100, 30, 30)])
    assert good.summary()["burst_survived"] is True
    assert good.summary()["quiet_p99_vs_alone_fair"] == pytest.approx(1.2)
    no_header = _result([_neighbour("alone", 1000), _neighbour("fair+bucket", 1100, 30, 29)])
    assert no_header.summary()["burst_survived"] is False
    crashed = _result([_neighbour("alone", 1000, alive=False), _neighbour("fair+bucket", 1100, 30, 30)])
    assert crashed.summary()["burst_survived"] is False


def test_the_error_alert_behaves_only_without_false_alerts_and_within_the_overload():
    ok = _result([], alerts=_alerts(fire_at=38)).summary()
    assert ok["error_alert_behaves"] and ok["error_alert_fire_s"] == 8 and ok["error_alert_within_bound"]
    assert ok["error_alert_after_first_error_s"] == 5  # the first refusal came 3 s into the overload
    late = _result([], alerts=_alerts(fire_at=50)).summary()
    assert not late["error_alert_within_bound"] and late["error_alert_behaves"]  # fired, but 17 s after the errors
    assert ok["error_alert_resolve_s"] == 10  # the overload ended at 70 s
    noisy = _result([], alerts=_alerts(fire_at=38, false_at=10)).summary()
    assert noisy["false_alerts"] == 1 and not noisy["error_alert_behaves"]
    skipped = _result([], alerts=AlertRun("skipped", "no prometheus")).summary()
    assert skipped["alerts_status"].startswith("skipped") and "error_alert_behaves" not in skipped


def test_claims_are_judged_from_the_summary_and_the_conclusion_quotes_the_numbers():
    jobs = [JobVariant("none", _p(100), _p(300), 100, 0, 0, 0, 40, None, None, None),
            JobVariant("inline", _p(400), _p(900), 100, 0, 4, 4, 40, _p(9000, 4), None, None),
            JobVariant("queued", _p(150), _p(400), 100, 0, 4, 3, 40, _p(20, 4), 1.0, 8.0)]
    result = _result([_neighbour("alone", 1000), _neighbour("fifo", 9000), _neighbour("fair", 1200),
                      _neighbour("fair+bucket", 1100, 30, 30)], alerts=_alerts(fire_at=38), jobs=jobs)
    verdicts = {r.claim: r.status for r in result.claims()}
    assert {"C3", "C8", "C9", "C18"} <= set(verdicts)
    # 4 submissions: C9 is judged on their max (30 ms), never on a "p99" of 4 samples.
    s = result.summary()
    assert s["job_submit_statistic"] == "max" and s["job_submit_ms_tail"] == 30.0 and "job_submit_ms_p99" not in s
    c9 = next(r for r in result.claims() if r.claim == "C9")
    assert c9.measured == 30.0 and c9.status == "holds"
    assert verdicts["C3"] == "simulated"
    text = result.conclusion()
    assert "9000 ms under FIFO" in text and "1200 ms under fair queueing" in text and "Simulated" in text
    assert set(result.tables()) >= {"jobs", "neighbours", "alert_series", "alert_intervals", "autoscaling"}


@pytest.mark.skipif(availability() is not None, reason=str(availability()))
def test_smoke_stage_end_to_end(perfkit_root):
    from perfkit.stage import run_stage

    (perfkit_root / "data" / "claims.yaml").symlink_to(ROOT / "data" / "claims.yaml")
    metrics = json.loads(run_stage("operations", smoke=True, root=perfkit_root).read_text())["summary"]
    assert metrics["alerts_status"] == "ok" and metrics["false_alerts"] == 0
    assert "error_alert_fire_s" in metrics and "hpa_utilization_pct" in metrics
    assert metrics["claims"]["C3:utilization with the HPA"]["status"] == "simulated"
    out = perfkit_root / "experiments" / "operations"
    assert (out / "autoscaling.csv").is_file() and (out / "alert_series.csv").is_file()
