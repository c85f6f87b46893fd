"""Alert rules and dashboard: promtool checks and unit tests, series the server exports, a real Prometheus."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from perfkit.monitoring import rules
from perfkit.monitoring.prometheus import AlertWatcher, availability, intervals, prometheus
from perfkit.serving.metrics import ServingMetrics

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "monitoring"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
needs_prometheus = pytest.mark.skipif(availability() is not None, reason=str(availability()))
SMOKE = rules.Thresholds(window_s=5, for_s=5)


def _exported_samples() -> set[str]:
    """Every sample name the server's registry writes once each metric has a value (GPU gauges as on a GPU)."""
    m = ServingMetrics()
    m.observe_response("/v1/chat/completions", 503, 0.1)
    m.batch_size.observe(2)
    m.decode_rows.observe(2)
    m.queue_wait.observe(0.1)
    m.tokens.inc()
    m.gpu_memory_used.labels("0").set(1)
    m.gpu_memory_total.labels("0").set(2)
    families = text_string_to_metric_families(m.render().decode())
    return {s.name for f in families for s in f.samples}


def test_committed_rule_files_are_the_rendering_of_the_defaults():
    assert (MONITORING / "alerts.yml").read_text() == rules.render(rules.Thresholds())
    assert (MONITORING / "alerts_test.yml").read_text() == rules.unit_tests(rules.Thresholds())


def test_rules_and_dashboard_read_only_series_the_server_exports():
    exported = _exported_samples()
    rule_series = rules.series_names((MONITORING / "alerts.yml").read_text())
    dashboard = json.loads((MONITORING / "grafana" / "perfkit.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    dash_series = set().union(*(rules.series_names(e) for e in exprs))
    assert rule_series and dash_series
    assert rule_series <= exported, rule_series - exported
    assert dash_series <= exported, dash_series - exported
    # every rule's series is on the dashboard too, so a page can be looked at
    assert rule_series <= dash_series
    # a family name without its suffix is not a sample: the check would catch it
    assert "perfkit_errors" not in exported and "perfkit_request_latency_seconds" not in exported


def test_gpu_memory_gauges_are_not_exported_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    names = {s.name for f in text_string_to_metric_families(ServingMetrics().render().decode()) for s in f.samples}
    assert "perfkit_gpu_memory_total_bytes" not in names and "perfkit_gpu_memory_used_bytes" not in names


@needs_promtool
def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(["promtool", *args], cwd=MONITORING, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
@pytest.mark.parametrize("changed", [{"queue_depth": 60}, {"error_ratio": 0.05}, {"memory_ratio": 0.95}])
def test_promtool_unit_tests_fail_when_a_threshold_moves(tmp_path, changed):
    (tmp_path / "alerts.yml").write_text(rules.render(replace(rules.Thresholds(), **changed)))
    (tmp_path / "alerts_test.yml").write_text(rules.unit_tests(rules.Thresholds()))
    done = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True, timeout=60)
    assert done.returncode != 0


@needs_promtool
def test_short_windows_render_rules_that_pass_their_own_tests(tmp_path):
    (tmp_path / "alerts.yml").write_text(rules.render(SMOKE))
    (tmp_path / "alerts_test.yml").write_text(rules.unit_tests(SMOKE))
    done = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_intervals_from_an_alert_timeline():
    samples = [(0.0, {}), (1.0, {"A": "pending"}), (2.0, {"A": "firing"}), (3.0, {"A": "firing"}), (4.0, {}), (5.0, {"A": "firing"})]
    assert intervals(samples, "A") == [(2.0, 4.0), (5.0, None)]
    assert intervals(samples, "A", "pending") == [(1.0, 2.0)]
    assert intervals(samples, "B") == []


@needs_prometheus
def test_a_real_prometheus_fires_the_queue_alert_and_resolves_it(tmp_path):
    metrics = ServingMetrics()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    port = server.server_address[1]
    fast = rules.Thresholds(window_s=2, for_s=1)
    try:
        with (
            prometheus([f"127.0.0.1:{port}"], rules.render(fast), tmp_path, scrape_interval_s=0.5, eval_interval_s=0.5) as prom,
            AlertWatcher(prom, interval_s=0.25) as watcher,
        ):
            metrics.queue_depth.set(3)
            time.sleep(3)
            high = time.time()
            metrics.queue_depth.set(fast.queue_depth + 1)
            deadline = high + 20
            while time.time() < deadline and not watcher.intervals(rules.QUEUE_ALERT):
                time.sleep(0.2)
            metrics.queue_depth.set(0)
            deadline = time.time() + 20
            while time.time() < deadline and watcher.intervals(rules.QUEUE_ALERT)[-1][1] is None:
                time.sleep(0.2)
            assert prom.targets_up() == 1
    finally:
        server.shutdown()
    fired = watcher.intervals(rules.QUEUE_ALERT)
    assert len(fired) == 1 and fired[0][0] > high and fired[0][1] is not None
    assert not watcher.intervals(rules.ERROR_ALERT) and not watcher.intervals(rules.MEMORY_ALERT)
