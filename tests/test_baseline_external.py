"""The baseline stage against an endpoint it did not start (`load.target_url`): the client-side figures,
and the server-only ones reported as not available rather than invented."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import judged, smoke_experiments
from test_baseline_batching import _shrink, _table

from perfkit import config
from perfkit.endpoints.base import NOT_AVAILABLE
from perfkit.serving.launch import launch
from perfkit.stage import run_stage


def run_against_a_separate_server(root: Path, stage: str, scheduler: str, url_suffix: str = "") -> tuple[dict, str]:
    """Start a reference server by hand, point `load.target_url` at it, run `stage` in smoke mode: (summary, its URL)."""
    _shrink(root)
    cfg = config.load("serve", smoke=True, root=root)
    with launch(
        cfg, overrides={"serving.scheduler": scheduler, "serving.max_queue_wait_s": 3600}, warmup=True, probe_cold_start=False
    ) as server:
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["smoke"]["load"] |= {"target_url": server.base_url + url_suffix}
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return json.loads(run_stage(stage, smoke=True, root=root).read_text())["summary"], server.base_url


def test_baseline_measures_an_external_endpoint_without_launching_a_server(perfkit_root: Path) -> None:
    summary, url = run_against_a_separate_server(perfkit_root, "baseline", "sequential", "/")
    cfg = config.load("serve", smoke=True, root=perfkit_root)
    assert summary["endpoint"] == "openai" and summary["endpoint_url"] == url and cfg.model.name in summary["endpoint_models"]
    assert summary["requests"] == 3 and summary["error_rate"] == 0.0 and summary["fixed_output_length"] is True
    assert summary["latency_ms_p50"] > 0 and summary["throughput_tok_s"] > 0
    for key in ("peak_rss_mb", "cpu_util_pct", "cold_start_s", "model_load_s"):
        assert summary[key] == NOT_AVAILABLE
    assert summary["first_response_s"] == NOT_AVAILABLE  # no server of its own was started
    timings = _table(perfkit_root, "baseline", "timings")
    assert (timings[~timings["warmup"]]["status"] == 200).all()
    html = (smoke_experiments(perfkit_root) / "baseline" / "baseline.html").read_text()
    assert url in html and NOT_AVAILABLE in html


def test_batching_measures_an_external_endpoint_as_one_variant_with_client_figures_only(perfkit_root: Path) -> None:
    summary, url = run_against_a_separate_server(perfkit_root, "batching", "dynamic")
    cfg = config.load("serve", smoke=True, root=perfkit_root)
    assert summary["endpoint_url"] == url and summary["endpoint_model"] == cfg.model.name
    assert summary["rounds"] == 2 and summary["external_tok_s"] > 0
    # No scheduler sweep, offline engine or targets: nothing a reference-server run would report.
    assert not {k for k in summary if k.startswith(("dynamic", "sequential", "offline", "speedup", "continuous"))}
    variants = _table(perfkit_root, "batching", "variants")
    assert variants["variant"].tolist() == ["external"]
    assert variants[["mean_batch_size", "peak_rss_mb", "server_cpu_util_pct"]].isna().all().all()
    assert _table(perfkit_root, "batching", "batch_sizes").empty
    claims = judged("batching", summary)
    wait = "mean wait batching adds at batch 8 (time to first token against a sequential server, a light open-loop load)"
    for label in (wait, "utilization: rows per decode step, % of the batch width 8"):
        assert claims[f"C17:{label}"].status == "not measured yet" and claims[f"C17:{label}"].measured is None
    html = (smoke_experiments(perfkit_root) / "batching" / "batching.html").read_text()
    assert url in html and NOT_AVAILABLE in html
