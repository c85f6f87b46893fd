"""The operations stage: its params match the committed rules and manifests; its verdicts follow the numbers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from conftest import judged, smoke_experiments

from perfkit.autoscaling import HpaPolicy, Trace, compare
from perfkit.hardware import CpuClock
from perfkit.monitoring import rules
from perfkit.monitoring.prometheus import availability
from perfkit.stages.operations import OperationsConfig
from perfkit.stages.operations.alerts import AlertRun, alert_queue_wait_s, thresholds
from perfkit.stages.operations.autoscale import Autoscaling, measured_inputs
from perfkit.stages.operations.common import Percentiles
from perfkit.stages.operations.longjobs import JobVariant, diagnose
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
    return NeighbourRun(
        variant,
        "off",
        "15 requests/s, burst 30",
        _p(p99),
        _p(p99 / 2),
        120,
        0,
        50,
        50 - burst_429,
        burst_429,
        0,
        with_header,
        alive,
        600.0,
        610.0,
    )


def _result(neighbours, alerts=None, jobs=(), submit_probe=None, isolated_failure=None):
    from perfkit.stages.operations.result import OperationsResult

    trace = Trace((1, 2, 4, 2), day_s=3600)
    fixed, hpa = compare(trace, 2.0, 5.0, HpaPolicy(), 5)
    auto = Autoscaling(fixed, hpa, 5, 2.0, 5.0, "params")
    return OperationsResult(
        3.0, alerts, tuple(jobs), tuple(neighbours), auto, (1.0, 1.0), 200.0, 1.5, submit_probe=submit_probe,
        isolated_failure=isolated_failure,
    )  # fmt: skip


def _alerts(fire_at: float, false_at: float | None = None) -> AlertRun:
    firing = {rules.ERROR_ALERT: [(fire_at, 80.0)], rules.QUEUE_ALERT: []}
    if false_at is not None:
        firing[rules.ERROR_ALERT].insert(0, (false_at, false_at + 2))
    return AlertRun(
        "ok",
        capacity_rps=2.5,
        max_queue_wait_s=30,
        queue_cap=75,
        max_queue_depth=60,
        bound_s=13,
        phases=(0, 30, 70, 100),
        firing=firing,
        series={"queue depth": [(0, 0)], "error ratio": [(0, 0)]},
        thresholds=rules.Thresholds(),
        first_error_s=33.0,
    )


def test_the_burst_survives_only_when_the_bucket_refuses_it_with_retry_after_and_nothing_fell_over():
    good = _result([_neighbour("alone", 1000), _neighbour("fair", 1200), _neighbour("fair+bucket", 1100, 30, 30)])
    assert good.summary()["burst_survived"] is True
    assert good.summary()["quiet_p99_vs_alone_fair"] == pytest.approx(1.2)
    no_header = _result([_neighbour("alone", 1000), _neighbour("fair+bucket", 1100, 30, 29)])
    assert no_header.summary()["burst_survived"] is False
    crashed = _result([_neighbour("alone", 1000, alive=False), _neighbour("fair+bucket", 1100, 30, 30)])
    assert crashed.summary()["burst_survived"] is False


def _rounds(variant: str, seconds: list[list[float]], burst_429: int = 0) -> list[NeighbourRun]:
    """One run of `variant` per round, each with its quiet clients' latencies kept."""
    return [
        NeighbourRun(
            variant,
            "requests",
            "15 tokens/s, burst 30",
            Percentiles.of(lat),
            None,
            len(lat),
            0,
            20,
            20 - burst_429,
            burst_429,
            0,
            burst_429,
            True,
            600.0,
            610.0,
            r,
        )
        for r, lat in enumerate(seconds)
    ]


def test_c8s_pair_is_pooled_over_its_rounds_with_an_interval_and_judged_only_from_100_requests():
    from perfkit import claims

    alone = _rounds("alone", [[1.0] * 39 + [2.0], [1.0] * 39 + [2.2], [1.0] * 39 + [2.4]])  # 120 requests, 3 slow
    limited = _rounds("fair+bucket", [[1.2] * 39 + [2.5], [1.2] * 39 + [2.6], [1.2] * 39 + [2.7]], burst_429=5)
    context = [_rounds("fifo", [[3.0] * 40])[0], _rounds("fair", [[1.5] * 40])[0]]
    s = _result([alone[0], *context, limited[0], alone[1], limited[1], alone[2], limited[2]]).summary()
    assert s["neighbour_rounds"] == 3 and s["quiet_requests_alone"] == 120 and s["quiet_requests_fair_bucket"] == 120
    assert s["quiet_p99_reliable"] is True and s["quiet_p99_reliable_fifo"] is False  # context: one round of 40
    assert s["burst_429"] == 15 and s["burst_429_with_retry_after"] == 15 and s["burst_survived"] is True
    ratio = s["quiet_p99_vs_alone_fair_bucket"]
    assert s["quiet_p99_vs_alone_fair_bucket_ci_low"] <= ratio <= s["quiet_p99_vs_alone_fair_bucket_ci_high"]
    assert 1.0 < ratio < 1.5 and s["quiet_p99_vs_alone_fifo"] == pytest.approx(3.0 / np.percentile([1.0] * 117 + [2.0, 2.2, 2.4], 99))
    c8 = next(r for k, r in judged("operations", s).items() if k.startswith("C8:the nine others' p99"))
    assert c8.measured == pytest.approx(ratio) and c8.status != claims.NOT_TESTED
    two = _result([alone[0], limited[0], alone[1], limited[1]]).summary()  # 80 requests each: no p99
    c8_two = next(r for k, r in judged("operations", two).items() if k.startswith("C8:the nine others' p99"))
    assert two["quiet_p99_reliable"] is False and c8_two.status == claims.NOT_TESTED and "80 requests alone" in c8_two.why


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


def test_the_alerts_server_queue_bound_lets_the_headroom_times_the_threshold_wait_at_any_capacity():
    for capacity in (0.5, 1.75, 6.0):
        wait = alert_queue_wait_s(DEFAULTS, capacity, configured_s=30.0)
        assert wait * capacity == pytest.approx(DEFAULTS.alert_queue_headroom * DEFAULTS.queue_alert)
        assert wait * capacity > DEFAULTS.queue_alert  # the queue alert can fire
    assert alert_queue_wait_s(DEFAULTS.model_copy(update={"alert_queue_headroom": 0}), 1.75, configured_s=30.0) == 30.0
    summary = _result([], alerts=_alerts(40.0)).summary()
    assert summary["alert_max_queue_wait_s"] == 30 and summary["queue_alert_possible"] is True


JOBS = [
    JobVariant("none", _p(100), _p(300), 100, 0, 0, 0, 40, None, None, None),
    JobVariant("inline", _p(400), _p(900), 100, 0, 4, 4, 40, _p(9000, 4), None, None),
    JobVariant("queued", _p(150), _p(400), 100, 0, 4, 3, 40, _p(20, 4), 1.0, 8.0),
]
NEIGHBOURS = [_neighbour("alone", 1000), _neighbour("fifo", 9000), _neighbour("fair", 1200), _neighbour("fair+bucket", 1100, 30, 30)]
C9_SUBMIT, C9_TTFT = "C9:job submit p99", "C9:short requests' TTFT p50 with long jobs queued, over the same load without jobs"


def test_claims_are_judged_from_the_summary_and_the_conclusion_quotes_the_numbers():
    from perfkit import claims

    result = _result(NEIGHBOURS, alerts=_alerts(fire_at=38), jobs=JOBS)
    s = result.summary()
    assert "claims" not in result.metrics()["summary"]  # the report judges; the stage only measures
    # Short TTFT p50: 50 ms without jobs, 200 inline, 75 queued (no samples kept: a plain ratio, no interval).
    assert s["short_ttft_p50_queued_vs_none"] == pytest.approx(1.5) and s["short_ttft_p50_inline_vs_none"] == pytest.approx(4.0)
    assert "short_ttft_p50_queued_vs_none_ci_low" not in s
    # 4 submissions: the submit tail is their max (30 ms), never a "p99" of 4 samples, and it tests no p99 claim.
    assert s["job_submit_statistic"] == "max" and s["job_submit_ms_tail"] == 30.0 and "job_submit_ms_p99" not in s
    assert s["job_submit_reliable"] is False and s["job_submit_source"] == "the queued variant's jobs"
    verdicts = judged("operations", s)
    submit = verdicts[C9_SUBMIT]
    assert submit.status == claims.NOT_TESTED and submit.measured == 30.0
    assert "the max of 4 submissions (30.0 ms)" in submit.why and "a p99 needs >= 100" in submit.why
    assert verdicts[C9_TTFT].status == claims.FAILS and verdicts[C9_TTFT].measured == pytest.approx(1.5)  # 1.5 > 1.1
    assert verdicts["C9:short requests' TTFT p50 with jobs queued"].status == claims.TEST_BED
    assert claims.claim_status(r.status for k, r in verdicts.items() if k.startswith("C9:")) == claims.FAILS
    assert verdicts["C3:utilization with the HPA"].status == claims.SIMULATED
    assert verdicts["C8:a burster is limited and the server survives"].status == claims.SEEN
    fair_bucket = next(r for k, r in verdicts.items() if k.startswith("C8:the nine others' p99"))
    assert fair_bucket.measured == pytest.approx(1.1) and fair_bucket.status == claims.HOLDS  # 1100 / 1000 ms, at most 1.5
    assert verdicts["C18:error-rate alert fires under overload and not under normal load"].status == claims.SEEN
    text = result.conclusion()
    assert "FIFO 9000 ms" in text and "(off) 1200 ms" in text and "1.10x alone" in text and "Simulated" in text
    assert set(result.tables()) >= {"jobs", "neighbours", "alert_series", "alert_intervals", "autoscaling"}


def test_the_submit_probe_gives_the_submit_p99_and_a_p99_needs_100_requests():
    from perfkit import claims

    s = _result([], jobs=JOBS, submit_probe=_p(20, 120)).summary()
    assert s["job_submit_source"] == "no-op probe" and s["job_submit_count"] == 120
    assert s["job_submit_statistic"] == "p99" and s["job_submit_reliable"] is True
    assert s["job_submit_ms_p99"] == 20.0 and s["job_submit_ms_tail"] == 20.0
    submit = judged("operations", s)[C9_SUBMIT]
    assert submit.status == claims.HOLDS and submit.measured == 20.0  # at most 200 ms
    assert judged("operations", _result([], jobs=JOBS, submit_probe=_p(500, 120)).summary())[C9_SUBMIT].status == claims.FAILS
    # A short request's p99 is reported from >= 100 requests only; its p50 and count always.
    few = [JobVariant("none", _p(100, 99), _p(300, 99), 99, 0, 0, 0, 40, None, None, None)]
    s = _result([], jobs=few).summary()
    assert s["short_ttft_count_none"] == 99 and s["short_ttft_ms_p50_none"] == 50.0
    assert not any(k.startswith("short_ttft_ms_p99") for k in s)
    assert _result([], jobs=JOBS).summary()["short_ttft_ms_p99_none"] == 100.0


def test_the_queued_over_none_ratio_has_an_interval_from_the_kept_samples():
    from perfkit.stages.operations.common import Percentiles

    none = Percentiles.of([0.100 + 0.001 * (i % 5) for i in range(60)])
    queued = Percentiles.of([0.200 + 0.001 * (i % 5) for i in range(60)])
    jobs = [
        JobVariant("none", none, none, 60, 0, 0, 0, 40, None, None, None),
        JobVariant("queued", queued, queued, 60, 0, 4, 4, 40, _p(20, 4), 1.0, 8.0),
    ]
    s = _result([], jobs=jobs).summary()
    assert s["short_ttft_p50_queued_vs_none"] == pytest.approx(202 / 102)
    assert s["short_ttft_p50_queued_vs_none_ci_low"] <= s["short_ttft_p50_queued_vs_none"] <= s["short_ttft_p50_queued_vs_none_ci_high"]
    assert s["short_ttft_p50_queued_vs_none_ci_low"] > 1.1  # twice as slow in every resample
    assert judged("operations", s)[C9_TTFT].status == "does not hold"


@pytest.mark.skipif(availability() is not None, reason=str(availability()))
def test_smoke_stage_end_to_end(perfkit_root):
    from perfkit.stage import run_stage

    metrics = json.loads(run_stage("operations", smoke=True, root=perfkit_root).read_text())["summary"]
    assert metrics["alerts_status"] == "ok" and metrics["false_alerts"] == 0
    assert "error_alert_fire_s" in metrics and "hpa_utilization_pct" in metrics
    assert judged("operations", metrics)["C3:utilization with the HPA"].status == "simulated"
    out = smoke_experiments(perfkit_root) / "operations"
    assert (out / "autoscaling.csv").is_file() and (out / "alert_series.csv").is_file()


def _job(
    variant: str, finished: int, ok: int, server: float = 30.0, worker: float = 2.0, machine: float = 50.0, requests: int = 27
) -> JobVariant:
    """A 40 s window on 2 cores (80 CPU seconds) at 0.67 req/s offered; `finished` answered by the last arrival."""
    return JobVariant(
        variant, _p(900), _p(2000), requests, 0, 4, 4, 45.0, _p(20, 4), 1.0, 8.0, 0.67, 40.0, finished, ok, 2, server, worker, machine
    )


def test_a_job_variants_rates_unserved_requests_and_cpu_shares_are_computed_from_its_window():
    j = _job("queued", finished=10, ok=8, server=40.0, worker=36.0, machine=78.0)
    # 26 requests came before the last arrival; by it 10 were answered, 8 of them 200: 18 unserved, 16 still waiting
    assert j.achieved_rps == pytest.approx(8 / 40) and j.unserved == 18 and j.waiting == 16
    assert j.unserved_share == pytest.approx(18 / 26)
    assert j.arrived_rps == pytest.approx(26 / 40) and j.available_cpu_s == 80.0
    assert j.cpu_share_pct(j.worker_cpu_s) == pytest.approx(45.0) and j.cpu_share_pct(None) is None
    row = j.row()
    assert row["machine_cpu_share_pct"] == pytest.approx(97.5) and row["short_unserved_requests"] == 18
    assert not j.kept_up(0.2) and _job("none", finished=25, ok=25).kept_up(0.2)
    assert not _job("none", finished=25, ok=15).kept_up(0.2)  # answered quickly, but refused: not kept up with
    assert not JobVariant.empty("none").kept_up(0.2)  # no requests: nothing was kept up with
    assert _job("none", finished=1, ok=1, requests=2).kept_up(0.2)  # the last arrival itself is never unserved


def test_the_queued_slowdown_is_put_on_the_worker_only_when_its_cpu_filled_the_cores():
    none = _job("none", finished=25, ok=25)
    behind = _job("queued", finished=10, ok=10, server=40.0, worker=36.0, machine=78.0)  # 97.5% busy, 52.5% without
    assert diagnose(none, behind, 0.2, 0.9).cause == "worker_cpu"
    assert diagnose(none, _job("queued", finished=25, ok=25, worker=36.0, machine=78.0), 0.2, 0.9).cause == "kept_up"
    spare = _job("queued", finished=10, ok=10, server=30.0, worker=8.0, machine=50.0)  # 62.5% busy: cores not full
    assert diagnose(none, spare, 0.2, 0.9).cause == "not_cpu"
    crowded = _job("queued", finished=10, ok=10, server=40.0, worker=4.0, machine=78.0)  # full even less the worker
    assert diagnose(none, crowded, 0.2, 0.9).cause == "cpu_full_without_worker"
    assert diagnose(_job("none", finished=10, ok=10), behind, 0.2, 0.9).cause == "load_too_high"
    unmeasured = _job("queued", finished=10, ok=10, server=None, worker=None, machine=None)
    assert diagnose(none, unmeasured, 0.2, 0.9).cause == "unmeasured"


def test_the_jobs_summary_and_table_carry_the_keep_up_flags_and_cpu_shares():
    inline = _job("inline", finished=24, ok=24, server=45.0, worker=0.5, machine=60.0)
    fell = _result(
        [], jobs=[_job("none", finished=25, ok=25), inline, _job("queued", finished=10, ok=10, server=40.0, worker=36.0, machine=78.0)]
    )
    s = fell.summary()
    assert s["jobs_queued_cause"] == "worker_cpu" and s["jobs_queued_short_kept_up"] is False
    assert s["jobs_inline_short_kept_up"] is True and s["jobs_none_short_kept_up"] is True
    assert s["jobs_queued_worker_cpu_share_pct"] == pytest.approx(45.0)
    assert s["jobs_queued_short_achieved_rps"] == pytest.approx(0.25) and s["jobs_queued_short_offered_rps"] == 0.67
    kept = _result([], jobs=[_job("none", finished=25, ok=25), inline, _job("queued", finished=25, ok=25)])
    assert kept.summary()["jobs_queued_cause"] == "kept_up" and kept.summary()["jobs_queued_short_kept_up"] is True
    table = fell.tables()["jobs"]
    assert {"short_offered_rps", "short_achieved_rps", "server_cpu_share_pct", "worker_cpu_share_pct"} <= set(table.columns)
    assert table.set_index("variant").loc["queued", "worker_cpu_s"] == 36.0
    assert fell.conclusion() and kept.conclusion()  # both render


def test_isolation_moves_every_worker_thread_to_its_own_core_and_gives_the_server_its_cores_back():
    import os
    import subprocess
    import sys

    from perfkit.stages.operations.longjobs import isolation

    cores = sorted(os.sched_getaffinity(0))
    threaded = "import threading, time; [threading.Thread(target=time.sleep, args=(30,)).start() for _ in range(3)]; time.sleep(30)"
    server, worker = (subprocess.Popen([sys.executable, "-c", threaded]) for _ in range(2))
    try:
        time.sleep(1.0)  # their threads started
        with isolation(server.pid, worker.pid) as isolated:
            if len(cores) < 2:
                assert isolated is False
                return
            worker_threads = [t.id for t in psutil.Process(worker.pid).threads()]
            assert len(worker_threads) == 4 and {frozenset(os.sched_getaffinity(t)) for t in worker_threads} == {frozenset(cores[-1:])}
            assert {os.getpriority(os.PRIO_PROCESS, t) for t in worker_threads} == {19}  # every thread, not the main one only
            assert {frozenset(os.sched_getaffinity(t.id)) for t in psutil.Process(server.pid).threads()} == {frozenset(cores[:-1])}
        assert {frozenset(os.sched_getaffinity(t.id)) for t in psutil.Process(server.pid).threads()} == {frozenset(cores)}
    finally:
        for proc in (server, worker):
            proc.kill()
            proc.wait()


def test_the_isolated_variant_is_summarized_beside_queued_and_shown_as_context_for_c9():
    jobs = [*JOBS, JobVariant("isolated", _p(120), _p(350), 100, 0, 4, 4, 40, _p(20, 4), 1.0, 8.0)]
    s = _result(NEIGHBOURS, jobs=jobs).summary()
    assert s["short_ttft_p50_isolated_vs_none"] == pytest.approx(1.2)  # 60 / 50 ms
    iso = next(r for k, r in judged("operations", s).items() if "worker isolated" in k)
    assert iso.status == "context, not judged" and iso.measured == pytest.approx(1.2)


def test_an_isolated_server_that_does_not_start_is_none_and_says_why(perfkit_root, monkeypatch):
    from perfkit import config
    from perfkit.serving.launch import LaunchError
    from perfkit.stages.operations import experiment

    def broken(*_args, **_kwargs):
        raise LaunchError("server not ready after the timeout:\nLoading weights\nOSError: [Errno 98] Address in use\n")

    monkeypatch.setattr(experiment, "launch", broken)
    cfg = config.load("operations", smoke=True, root=perfkit_root)
    failures: list[str] = []
    with experiment.isolated_server(cfg, OperationsConfig(), 1, failures) as server:
        assert server is None
    assert failures == ["server not ready after the timeout; its log ends: OSError: [Errno 98] Address in use"]


def test_the_page_says_why_the_isolated_variant_is_missing():
    from perfkit.stages.operations.render import _jobs_text

    failed = _result(NEIGHBOURS, jobs=JOBS, isolated_failure="server not ready after the timeout; its log ends: OSError")
    expected = (
        "The isolated variant was not measured: its server did not start (server not ready after the timeout; its log ends: OSError)."
    )
    assert expected in _jobs_text(failed)
    assert "not measured" not in _jobs_text(_result(NEIGHBOURS, jobs=JOBS))


def test_the_cpu_clock_keeps_what_a_finished_process_used():
    import subprocess
    import sys

    spin = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"])
    with CpuClock({"spin": spin.pid}, interval_s=0.02) as clock:
        spin.wait()
        clock.read()  # its process gone (reaped): the clock keeps its last reading instead of falling to 0
    values = [v["spin"] for _, v in clock.readings]
    assert max(values) > 0.1
    assert values == sorted(values)  # cumulative: never falls, the process's exit included
    assert clock.used(clock.readings[0][0], clock.readings[-1][0])["spin"] == pytest.approx(max(values) - values[0])


def test_the_cpu_clock_interpolates_between_readings_and_clamps_outside_them():
    clock = CpuClock({})
    clock.readings = [(100.0, {"machine": 10.0}), (102.0, {"machine": 14.0})]
    assert clock.at(101.0)["machine"] == pytest.approx(12.0)
    assert clock.used(99.0, 101.5)["machine"] == pytest.approx(3.0)  # before the first reading: the first
    assert clock.used(101.0, 200.0)["machine"] == pytest.approx(2.0)
