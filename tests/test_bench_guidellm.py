"""bench/guidellm.py: guidellm's report read back, the command line it builds, and guidellm against the server.

The last test needs guidellm in its own venv (`make guidellm`, or $PERFKIT_GUIDELLM); it is skipped otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import bench_script

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).with_name("fixtures") / "guidellm-0.8.1-report.json"  # a real smoke run, trimmed


bench = bench_script("guidellm")


def test_the_report_gives_counts_rates_and_medians():
    report = json.loads(FIXTURE.read_text())
    got = bench.parse_report(report)
    metrics = report["benchmarks"][0]["metrics"]
    totals = metrics["request_totals"]
    assert (got["requests_completed"], got["requests_errored"], got["requests_incomplete"]) == (
        totals["successful"],
        totals["errored"],
        totals["incomplete"],
    )
    assert got["requests_completed"] > 0 and got["requests_errored"] == 0
    assert got["output_tok_s"] == metrics["output_tokens_per_second"]["total"]["mean"] > 0
    assert got["ttft_ms_p50"] == metrics["time_to_first_token_ms"]["successful"]["median"]
    assert got["itl_ms_p50"] == metrics["inter_token_latency_ms"]["successful"]["median"]
    assert got["output_tokens_min"] == got["output_tokens_max"] == 8  # the smoke workload's max_new_tokens
    assert got["prompt_tokens_p50"] == 32  # the server's usage: templated prompt, as perfkit's prompts count
    assert got["duration_s"] == report["benchmarks"][0]["duration"]


def test_a_report_without_exactly_one_benchmark_is_refused():
    report = json.loads(FIXTURE.read_text())
    with pytest.raises(bench.GuidellmError, match="one benchmark"):
        bench.parse_report(report | {"benchmarks": report["benchmarks"] * 2})


def test_the_command_streams_chat_at_the_concurrency_duration_and_lengths(tmp_path):
    cmd = bench.guidellm_command(
        Path("/v/bin/guidellm"),
        "http://127.0.0.1:8123",
        "smollm2",
        tmp_path / "tok",
        tmp_path / "r.json",
        streams=10,
        duration_s=60,
        prompt_tokens=98,
        output_tokens=32,
        seed=0,
    )
    assert cmd[:2] == ["/v/bin/guidellm", "run"]

    def option(name: str) -> dict:
        return json.loads(cmd[cmd.index(name) + 1])

    backend = option("--backend")
    assert backend["kind"] == "openai_http" and backend["target"] == "http://127.0.0.1:8123"
    assert backend["model"] == "smollm2" and backend["request_format"] == "/v1/chat/completions" and backend["stream"]
    assert option("--profile") == {"kind": "concurrent", "streams": 10}
    assert option("--constraint") == {"kind": "max_duration", "seconds": 60}
    data = option("--data")
    assert data["kind"] == "synthetic_text" and (data["prompt_tokens"], data["output_tokens"]) == (98, 32)
    assert option("--tokenizer")["model"] == str(tmp_path / "tok")
    assert option("--output") == {"kind": "json", "path": str(tmp_path / "r.json")}


def test_the_verdict_needs_the_mean_ratio_within_tolerance_and_no_guidellm_error():
    def rnd(guidellm: float, perfkit: float, errored: int = 0) -> dict:
        return {"guidellm": {"output_tok_s": guidellm, "requests_errored": errored}, "perfkit": {"output_tok_s": perfkit}}

    close = bench.compare([rnd(19.0, 20.0), rnd(21.0, 20.0)], 0.10)
    assert close["ratios"] == [0.95, 1.05] and close["ratio_mean"] == pytest.approx(1.0)
    assert close["within_tolerance"] and close["pass"]
    assert not bench.compare([rnd(19.0, 20.0, errored=1), rnd(21.0, 20.0)], 0.10)["pass"]
    far = bench.compare([rnd(10.0, 20.0), rnd(12.0, 20.0)], 0.10)
    assert not far["within_tolerance"] and not far["pass"]
    assert not bench.compare([rnd(10.0, 0.0)], 0.10)["pass"]  # perfkit measured nothing: no verdict


def test_prompt_text_plus_the_chat_template_is_the_workload_length(tiny_model_dir):
    from perfkit.models import load_tokenizer
    from perfkit.workload import chat_ids

    tokenizer = load_tokenizer(tiny_model_dir)
    text = bench.text_tokens(tokenizer, 128)
    assert 0 < text < 128
    assert text + len(chat_ids(tokenizer, [{"role": "user", "content": ""}])) == 128


def test_the_binary_is_found_by_flag_then_environment_then_the_make_venv(tmp_path, monkeypatch):
    def executable(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        return path

    venv = executable(tmp_path / bench.GUIDELLM_VENV / "bin" / "guidellm")
    env = executable(tmp_path / "env" / "guidellm")
    flag = executable(tmp_path / "flag" / "guidellm")
    monkeypatch.delenv(bench.GUIDELLM_ENV, raising=False)
    assert bench.find_guidellm(tmp_path) == venv
    monkeypatch.setenv(bench.GUIDELLM_ENV, str(env))
    assert bench.find_guidellm(tmp_path) == env
    assert bench.find_guidellm(tmp_path, str(flag)) == flag
    venv.unlink()
    monkeypatch.setenv(bench.GUIDELLM_ENV, str(tmp_path / "nope"))
    assert bench.find_guidellm(tmp_path) is None


def test_a_missing_guidellm_is_one_line_naming_make_guidellm(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERFKIT_ROOT", str(tmp_path))
    monkeypatch.delenv(bench.GUIDELLM_ENV, raising=False)
    assert bench.main(["--guidellm", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert "make guidellm" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(
    bench.find_guidellm(REPO) is None, reason=f"no guidellm binary: `make guidellm` builds it (or set {bench.GUIDELLM_ENV})"
)
def test_guidellm_gets_no_errors_from_the_server(perfkit_root, tiny_model_dir, tmp_path):
    from perfkit import config
    from perfkit.models import load_tokenizer
    from perfkit.serving.launch import launch

    cfg = config.override(config.load("baseline", smoke=True, root=perfkit_root), bench.SERVER_OVERRIDES)
    w = cfg.workload
    report = tmp_path / "guidellm" / "report.json"
    with launch(cfg, probe_cold_start=False) as server:
        cmd = bench.guidellm_command(
            bench.find_guidellm(REPO),
            server.base_url,
            cfg.model.name,
            tiny_model_dir,
            report,
            streams=2,
            duration_s=5,
            prompt_tokens=bench.text_tokens(load_tokenizer(tiny_model_dir), w.prompt_tokens),
            output_tokens=w.max_new_tokens,
            seed=w.seed,
        )
        got = bench.run_guidellm(cmd, report, timeout_s=5 + bench.START_GRACE_S, workers=1)
        assert bench.wait_idle(server.base_url, timeout_s=60) >= 0  # what the time limit cut off is dropped
    assert got["requests_errored"] == 0, (report.parent / "guidellm.log").read_text()[-2000:]
    assert got["requests_completed"] > 0
    assert got["output_tokens_min"] == got["output_tokens_max"] == w.max_new_tokens
    assert got["prompt_tokens_p50"] == w.prompt_tokens
    assert os.path.isfile(report)
