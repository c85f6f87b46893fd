"""A short real Locust run against the tiny-model server: closed loop, open loop, distributed."""

from __future__ import annotations

from pathlib import Path

import pytest

from perfkit import config
from perfkit.load.interchange import read_result, to_vllm
from perfkit.load.runner import LoadError, run_load, served_prompts
from perfkit.serving.launch import launch


def _check_rows(rows, *, total: int, warmup: int, max_tokens: int) -> None:
    assert len(rows) == total
    assert sum(r.warmup for r in rows) == warmup
    for r in rows:
        assert r.status == 200 and r.done and r.error is None
        assert r.output_tokens == max_tokens  # min_tokens + ignore_eos fix the length
        assert r.prompt_tokens > 0
        assert r.ttft_s is not None and 0 < r.ttft_s <= r.e2e_s
        assert r.lag_s >= 0
        assert 1 <= len(r.chunk_s) <= r.output_tokens and list(r.chunk_s) == sorted(r.chunk_s)  # each chunk's arrival
        assert r.chunk_s[0] == pytest.approx(r.ttft_s, abs=1e-5) and r.chunk_s[-1] <= r.e2e_s


def test_locust_runs_write_exact_per_request_timings(perfkit_root: Path, tmp_path: Path) -> None:
    cfg = config.load("baseline", smoke=True, root=perfkit_root)
    prompts = served_prompts(cfg)
    max_tokens = cfg.workload.max_new_tokens
    with launch(cfg, overrides={"serving.scheduler": "dynamic", "serving.max_batch_size": 2}, probe_cold_start=False) as server:
        closed = run_load(cfg, server, prompts, tmp_path / "closed", users=2, requests=4, warmup_requests=1)
        _check_rows(closed.timings, total=5, warmup=1, max_tokens=max_tokens)
        assert sorted(r.index for r in closed.timings) == list(range(5))
        assert len({r.key for r in closed.timings}) == 2  # each user its own bearer key
        assert closed.summary.requests == 4 and closed.summary.error_rate == 0.0
        assert closed.summary.littles_law_holds
        assert closed.summary.itl is not None and closed.summary.ttst is not None  # from the chunk arrivals
        assert closed.summary.goodput is not None and closed.summary.goodput.requests == 4
        energy = closed.energy  # a figure or why there is none, never both and never a silent zero
        assert (energy.joules is None) == bool(energy.why) and energy.joules != 0.0
        again = read_result(to_vllm(closed.timings, closed.summary, model="m"))  # vLLM's format and back
        assert again.summary.ttft == closed.summary.ttft and again.summary.throughput_tok_s == pytest.approx(
            closed.summary.throughput_tok_s
        )

        opened = run_load(cfg, server, prompts, tmp_path / "open", mode="open", users=3, rate_rps=20.0, requests=4, warmup_requests=0)
        _check_rows(opened.timings, total=4, warmup=0, max_tokens=max_tokens)
        assert {r.key for r in opened.timings} == {"perfkit-user-0", "perfkit-user-1", "perfkit-user-2"}
        assert opened.summary.lag is not None

        distributed_cfg = cfg.model_copy(update={"load": cfg.load.model_copy(update={"workers": 2})})
        spread = run_load(distributed_cfg, server, prompts, tmp_path / "dist", users=2, requests=4, warmup_requests=0)
        assert len(list((tmp_path / "dist").glob("timings-worker-*.jsonl"))) == 2  # each worker its own file
        _check_rows(spread.timings, total=4, warmup=0, max_tokens=max_tokens)
        with pytest.raises(LoadError, match="load.workers = 2: the open loop schedules every request from one process"):
            run_load(distributed_cfg, server, prompts, tmp_path / "dist-open", mode="open", rate_rps=20.0, requests=4)

        varied_cfg = cfg.model_copy(update={"workload": cfg.workload.model_copy(update={"output_spread": 0.9})})
        low, high = varied_cfg.workload.output_range
        varied = run_load(varied_cfg, server, prompts, tmp_path / "varied", users=2, requests=8, warmup_requests=0)
        lengths = [r.output_tokens for r in varied.timings]
        assert all(low <= n <= high for n in lengths) and len(set(lengths)) > 1  # drawn per request, within the range

        cut = run_load(cfg, server, prompts, tmp_path / "cut", users=1, requests=500, warmup_requests=0, duration_s=2)
        assert cut.summary.requests < 500
        assert any("time limit" in flag for flag in cut.summary.flags)  # a run the clock ended says so

        with pytest.raises(LoadError, match="already holds timings"):
            run_load(cfg, server, prompts, tmp_path / "closed")


def test_the_load_command_fails_in_one_line_on_a_dead_url(perfkit_root: Path, capsys) -> None:
    from perfkit.__main__ import main

    assert main(["load", "--url", "http://127.0.0.1:9/", "--users", "1", "--requests", "2", "--smoke"]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("perfkit: error:")]
    assert captured.out == "" and len(errors) == 1 and "http://127.0.0.1:9 is not reachable" in errors[0]
