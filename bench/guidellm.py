"""guidellm (a peer load tool no one here wrote) against perfkit's own load, on the same reference server.

Issue 14: a new user's first tool against `perfkit serve` must see no errors, and it must measure what
perfkit's load stage measures. One reference server is started once through perfkit's launcher
(127.0.0.1, a free port, serving config from params.yaml: the sequential scheduler unless `--set
serving.scheduler=dynamic`; `serving.max_queue_wait_s` raised to 3600 s so no stream is ever refused with
503, and the per-key rate limiter turned OFF, `serving.rate_limit.enabled=false`, because guidellm sends no
bearer key: all its streams would share one address key and its 15 tokens/s). Against it, interleaved over
`--rounds` rounds (ABAB: guidellm first in each round):

A. guidellm 0.8.1 (its own venv, `make guidellm`): `guidellm run`, backend openai_http on
   /v1/chat/completions, streamed; profile concurrent at `--concurrency` streams; constraint max_duration
   `--duration`; synthetic text whose templated prompt has workload.prompt_tokens tokens (the chat template's
   own tokens are subtracted from the text, so the server's usage counts what perfkit's prompts count) and
   workload.max_new_tokens output tokens, which guidellm asks for with `ignore_eos` (its own choice: the
   actual output lengths are read back and shown). Its JSON report gives requests completed / errored /
   incomplete (in flight when the time ran out), output tokens/s as guidellm reports it (all requests,
   partial outputs of the incomplete ones included), TTFT and ITL medians. guidellm runs with its own
   default of 10 worker processes unless `--guidellm-workers N` (GUIDELLM__MAX_WORKER_PROCESSES) says
   otherwise; its CPU inside the measured window is recorded either way.
B. perfkit's load (`perfkit.load.runner`: Locust in its own process, closed loop) with load.users =
   `--concurrency`, the same lengths and the same duration: its request budget is unbounded, so the time
   limit ends it (requests still in flight then are dropped, not counted as errors); its first
   load.warmup_requests answers are a warm-up round, not measured, as in the load stages.

Per round: both tools' output tokens/s and their ratio (guidellm / perfkit), and one table of perfkit's run beside
guidellm's recomputed from its per-request records with perfkit's definitions (`perfkit.load.interchange`; where its
report keeps no records, it says so); then the mean ratio and
whether it is within `--tolerance` (10%) of 1. Each tool's own CPU is recorded (guidellm's process tree
inside its measured window, Locust's process over its run, in cores): on a small machine the client
competes with the server.

    .venv/bin/python bench/guidellm.py [--duration 60] [--rounds 2] [--concurrency 10] [--set KEY=VALUE]
                                       [--guidellm PATH] [--out DIR] [--smoke]

Prints one line per round and tool, then the comparison; writes `<out>/guidellm.json` (and each tool's
own files under `<out>/round-N/`). Exits 1 with one line when guidellm is missing or a run fails, 2 when the comparison
fails (errored requests, or the mean ratio outside the tolerance).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GUIDELLM_ENV = "PERFKIT_GUIDELLM"
GUIDELLM_VENV = Path(".cache") / "guidellm-venv"
WORKERS_ENV = "GUIDELLM__MAX_WORKER_PROCESSES"
UNBOUNDED_REQUESTS = 10**7  # the closed loop's budget: the duration, not a count, ends perfkit's run
START_GRACE_S = 180.0  # guidellm's own start (it spawns worker processes) and report on top of its run time
IDLE_TIMEOUT_S = 120.0
SERVER_OVERRIDES = {"serving.max_queue_wait_s": 3600.0, "serving.rate_limit.enabled": False}


class GuidellmError(RuntimeError):
    """guidellm is missing, failed, or wrote no report."""


def find_guidellm(root: Path, explicit: str | None = None) -> Path | None:
    """The guidellm binary: `--guidellm PATH`, else $PERFKIT_GUIDELLM, else `make guidellm`'s venv."""
    for candidate in (explicit, os.environ.get(GUIDELLM_ENV), root / GUIDELLM_VENV / "bin" / "guidellm"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def text_tokens(tokenizer: Any, prompt_tokens: int) -> int:
    """Tokens of prompt text whose templated chat message has `prompt_tokens` tokens (the template's own removed)."""
    from perfkit.workload import chat_ids

    return max(1, prompt_tokens - len(chat_ids(tokenizer, [{"role": "user", "content": ""}])))


def guidellm_command(
    binary: Path,
    base_url: str,
    model: str,
    tokenizer_path: Path,
    out_json: Path,
    *,
    streams: int,
    duration_s: float,
    prompt_tokens: int,
    output_tokens: int,
    seed: int,
) -> list[str]:
    """`guidellm run` (0.8 CLI): streamed chat completions at `streams` concurrent streams for `duration_s`."""

    def arg(value: Mapping[str, Any]) -> str:
        return json.dumps(value, separators=(",", ":"))  # guidellm reads each option as JSON/YAML or key=value

    return [
        str(binary),
        "run",
        "--backend",
        arg({"kind": "openai_http", "target": base_url, "model": model, "request_format": "/v1/chat/completions", "stream": True}),
        "--profile",
        arg({"kind": "concurrent", "streams": streams}),
        "--constraint",
        arg({"kind": "max_duration", "seconds": duration_s}),
        "--data",
        arg({"kind": "synthetic_text", "prompt_tokens": prompt_tokens, "output_tokens": output_tokens}),
        "--tokenizer",
        arg({"kind": "huggingface_auto", "model": str(tokenizer_path)}),
        "--seed",
        arg({"kind": "static", "value": seed}),
        "--output",
        arg({"kind": "json", "path": str(out_json)}),
        "--disable-console-interactive",
    ]


def _stat(metrics: Mapping[str, Any], name: str, status: str, key: str) -> float | None:
    value = ((metrics.get(name) or {}).get(status) or {}).get(key)
    return None if value is None else float(value)


def parse_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """The figures compared, from guidellm's JSON report (its one benchmark)."""
    benchmarks = report.get("benchmarks") or []
    if len(benchmarks) != 1:
        raise GuidellmError(f"expected one benchmark in guidellm's report, found {len(benchmarks)}")
    bench = benchmarks[0]
    m = bench["metrics"]
    totals = m["request_totals"]
    duration = float(bench["duration"])
    return {
        "requests_completed": int(totals["successful"]),
        "requests_errored": int(totals["errored"]),
        "requests_incomplete": int(totals["incomplete"]),
        "duration_s": duration,
        "output_tok_s": _stat(m, "output_tokens_per_second", "total", "mean"),  # as guidellm reports it
        "output_tok_s_completed": _stat(m, "output_tokens_per_second", "successful", "mean"),
        "output_tokens": _stat(m, "output_token_count", "total", "total_sum"),
        "ttft_ms_p50": _stat(m, "time_to_first_token_ms", "successful", "median"),
        "itl_ms_p50": _stat(m, "inter_token_latency_ms", "successful", "median"),
        "prompt_tokens_p50": _stat(m, "prompt_token_count", "successful", "median"),  # the server's usage
        "output_tokens_min": _stat(m, "output_token_count", "successful", "min"),
        "output_tokens_max": _stat(m, "output_token_count", "successful", "max"),
    }


def _children_cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped descendants: a tool and the processes it waited for
    return use.ru_utime + use.ru_stime


def run_guidellm(command: list[str], out_json: Path, timeout_s: float, workers: int | None = None) -> dict[str, Any]:
    """Run `command` (perfkit.processes.spawn: it dies with this process) in `out_json`'s folder, with its log there;
    return the figures of the report it wrote to `out_json`, and its CPU. `workers`: guidellm's worker processes
    (GUIDELLM__MAX_WORKER_PROCESSES; None: its default, 10)."""
    from perfkit.hardware import CpuClock
    from perfkit.processes import spawn, stop

    folder, binary = out_json.parent, command[0]
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "guidellm.log"
    cpu_before, started = _children_cpu_s(), time.perf_counter()
    with log_path.open("wb") as log:
        env = os.environ | ({WORKERS_ENV: str(workers)} if workers else {})
        proc = spawn(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env)
        with CpuClock({"client": proc.pid}) as cpu:
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                stop(proc)
                raise GuidellmError(f"{binary} ran past {timeout_s:.0f} s; its log: {log_path}") from None
    wall = time.perf_counter() - started
    if code != 0 or not out_json.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise GuidellmError(f"{binary} exited with code {code} and no report:\n{tail}")
    report = json.loads(out_json.read_text())
    parsed = parse_report(report) | {"recomputed": recompute(report)}
    bench = report["benchmarks"][0]
    start, end = float(bench["start_time"]), float(bench["end_time"])
    cores = cpu.used(start, end)["client"] / (end - start) if end > start else None  # inside its measured window
    return parsed | {"client_cpu_cores": cores, "client_cpu_s": _children_cpu_s() - cpu_before, "wall_s": wall}


def recompute(report: Mapping[str, Any]) -> Any:
    """guidellm's per-request records through perfkit's definitions (`load.interchange`), or why they cannot be."""
    from perfkit.load.interchange import ResultFormatError, read_result

    try:
        return read_result(report).summary
    except ResultFormatError as exc:
        return str(exc)


def run_perfkit(cfg: Any, endpoint: Any, prompts: list, folder: Path, *, users: int, duration_s: float) -> dict[str, Any]:
    """perfkit's own closed-loop load (Locust in its own process) for `duration_s`, `users` users."""
    from perfkit.load.runner import run_load

    cpu_before, started = _children_cpu_s(), time.perf_counter()
    try:
        run = run_load(cfg, endpoint, prompts, folder, mode="closed", users=users, requests=UNBOUNDED_REQUESTS, duration_s=duration_s)
    except ValueError as exc:  # no measured request: the warm-up round took the whole duration
        raise RuntimeError(
            f"perfkit's load measured no request in {duration_s:g} s ({exc}; its warm-up round is "
            f"load.warmup_requests = {cfg.load.warmup_requests} answers): use a longer --duration"
        ) from None
    s = run.summary
    outputs = [r.output_tokens for r in run.timings if r.ok and not r.warmup]
    return {
        "requests_completed": s.ok_requests,
        "requests_errored": s.requests - s.ok_requests,
        "truncated": s.truncated,
        "errors_by_code": {str(k): v for k, v in s.errors_by_code.items()},
        "window_s": s.window_s,
        "output_tok_s": s.throughput_tok_s,
        "ttft_ms_p50": s.ttft.p50 if s.ttft else None,
        "tpot_ms_p50": s.tpot.p50 if s.tpot else None,
        "output_tokens_min": min(outputs, default=None),
        "output_tokens_max": max(outputs, default=None),
        "client_cpu_cores": s.client_cpu_pct / 100,  # the Locust process, over its run
        "client_cpu_s": _children_cpu_s() - cpu_before,
        "wall_s": time.perf_counter() - started,
        "flags": [f for f in s.flags if not f.startswith("time limit")],  # the time limit is how this run ends
        "summary": s,
    }


def _gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise ValueError(f"{name} not in /metrics")


def wait_idle(base_url: str, timeout_s: float = IDLE_TIMEOUT_S) -> float:
    """Wait until the server has no queued request and none in flight but this scrape (what a tool cut off at
    its time limit leaves running must not land in the next tool's window); returns the seconds waited."""
    import httpx

    started = time.perf_counter()
    while True:
        text = httpx.get(f"{base_url}/metrics", timeout=10).text
        if _gauge(text, "perfkit_queue_depth") == 0 and _gauge(text, "perfkit_requests_in_flight") <= 1:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"the server at {base_url} was still busy after {timeout_s:.0f} s")
        time.sleep(0.5)


def compare(rounds: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Per-round ratios of output tokens/s (guidellm / perfkit), their mean and 95% interval, and the verdict."""
    from perfkit.stats import t_interval

    ratios = [
        r["guidellm"]["output_tok_s"] / r["perfkit"]["output_tok_s"] if r["perfkit"]["output_tok_s"] else float("nan") for r in rounds
    ]
    mean, low, high = t_interval(ratios)
    errored = sum(r["guidellm"]["requests_errored"] for r in rounds)
    within = abs(mean - 1.0) <= tolerance
    return {
        "ratios": ratios,
        "ratio_mean": mean,
        "ratio_ci_low": low,
        "ratio_ci_high": high,
        "tolerance": tolerance,
        "within_tolerance": within,
        "guidellm_errored": errored,
        "pass": within and errored == 0,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_side_by_side(perfkit: Any, guidellm: Any) -> None:
    """perfkit's run and guidellm's, recomputed from its per-request records, in one table (or why not)."""
    import pandas as pd

    from perfkit.load.interchange import side_by_side

    if isinstance(guidellm, str):
        print(f"  guidellm's figures not recomputed: {guidellm}")
        return
    table = pd.DataFrame(side_by_side({"perfkit": perfkit, "guidellm, recomputed": guidellm}))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"), flush=True)


def print_round(n: int, tool: str, r: Mapping[str, Any]) -> None:
    lengths = f"{_fmt(r['output_tokens_min'], '.0f')}-{_fmt(r['output_tokens_max'], '.0f')}"
    itl = r.get("itl_ms_p50", r.get("tpot_ms_p50"))
    extra = f", {r['requests_incomplete']} incomplete" if "requests_incomplete" in r else f", {r['truncated']} truncated"
    print(
        f"round {n} {tool:9s} {r['output_tok_s']:7.2f} output tok/s | {r['requests_completed']:4d} completed, "
        f"{r['requests_errored']} errored{extra} | TTFT p50 {_fmt(r['ttft_ms_p50'], '.0f')} ms, "
        f"{'ITL' if 'itl_ms_p50' in r else 'TPOT'} p50 {_fmt(itl, '.1f')} ms | output tokens {lengths} | "
        f"client {_fmt(r['client_cpu_cores'], '.2f')} cores while measuring ({r['client_cpu_s']:.0f} CPU-s in "
        f"{r['wall_s']:.0f} s with start-up)",
        flush=True,
    )


def run_rounds(
    cfg: Any, binary: Path, args: argparse.Namespace, out: Path, model_path: Path, prompt_text_tokens: int, prompts: list
) -> list[dict[str, Any]]:
    """One server, then `args.rounds` rounds of guidellm and perfkit's load on it (ABAB), each after the server is idle."""
    from perfkit.serving.launch import launch

    w = cfg.workload
    rounds: list[dict[str, Any]] = []
    with launch(cfg, probe_cold_start=False) as server:
        for n in range(args.rounds):
            folder = out / f"round-{n}"
            report = folder / "guidellm" / "report.json"
            command = guidellm_command(
                binary,
                server.base_url,
                cfg.model.name,
                model_path,
                report,
                streams=args.concurrency,
                duration_s=args.duration,
                prompt_tokens=prompt_text_tokens,
                output_tokens=w.max_new_tokens,
                seed=w.seed,
            )
            settled = {"before_guidellm_s": wait_idle(server.base_url)}
            gl = run_guidellm(command, report, args.duration + START_GRACE_S, args.guidellm_workers)
            print_round(n, "guidellm", gl)
            settled["before_perfkit_s"] = wait_idle(server.base_url)
            pk = run_perfkit(cfg, server, prompts, folder / "perfkit", users=args.concurrency, duration_s=args.duration)
            print_round(n, "perfkit", pk)
            print_side_by_side(pk.pop("summary"), gl.pop("recomputed"))
            rounds.append({"round": n, "guidellm": gl, "perfkit": pk, "guidellm_command": command, "idle_wait_s": settled})
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per tool and round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (ABAB: guidellm, perfkit, ...)")
    parser.add_argument("--concurrency", type=int, default=10, help="guidellm streams = perfkit closed-loop users")
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed |mean ratio - 1|")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="params override, e.g. serving.scheduler=dynamic (server and load alike)",
    )
    parser.add_argument("--guidellm", default=None, help=f"the guidellm binary (else ${GUIDELLM_ENV}, else {GUIDELLM_VENV})")
    parser.add_argument(
        "--guidellm-workers", type=int, default=0, help=f"guidellm's worker processes ({WORKERS_ENV}); 0: guidellm's own default, 10"
    )
    parser.add_argument("--out", type=Path, default=Path(".cache/bench/guidellm"), help="results folder (relative: to the repo root)")
    parser.add_argument("--smoke", action="store_true", help="the smoke config: tiny workload")
    args = parser.parse_args(argv)

    from perfkit import config

    root = config.find_root()
    binary = find_guidellm(root, args.guidellm)
    if binary is None:
        print(f"guidellm not found (--guidellm, ${GUIDELLM_ENV}, {root / GUIDELLM_VENV}): run `make guidellm`", file=sys.stderr)
        return 1

    from perfkit.load.runner import served_prompts
    from perfkit.models import load_tokenizer
    from perfkit.provenance import load_average

    cfg = config.override(config.load("baseline", smoke=args.smoke, root=root), config.parse_sets(args.set))
    cfg = config.override(cfg, SERVER_OVERRIDES)  # the server's config and what this report records, alike
    out = args.out if args.out.is_absolute() else root / args.out
    out.mkdir(parents=True, exist_ok=True)
    model_path = cfg.resolve(cfg.model.path)
    w = cfg.workload
    prompt_text_tokens = text_tokens(load_tokenizer(model_path), w.prompt_tokens)
    prompts = served_prompts(cfg)
    load_start = load_average()
    try:
        rounds = run_rounds(cfg, binary, args, out, model_path, prompt_text_tokens, prompts)
    except RuntimeError as exc:  # guidellm or Locust failed, or the server did not start (LaunchError)
        print(f"bench/guidellm.py: {exc}", file=sys.stderr)
        return 1
    verdict = compare(rounds, args.tolerance)
    ratios = ", ".join(f"{r:.3f}" for r in verdict["ratios"])
    print(
        f"guidellm / perfkit output tok/s: {ratios} per round; mean {verdict['ratio_mean']:.3f} "
        f"(95% CI {verdict['ratio_ci_low']:.3f}-{verdict['ratio_ci_high']:.3f}); "
        f"{'within' if verdict['within_tolerance'] else 'NOT within'} {args.tolerance:.0%}; "
        f"guidellm errored requests: {verdict['guidellm_errored']}"
    )
    result = {
        "bench": "guidellm",
        "guidellm": str(binary),
        "guidellm_workers": args.guidellm_workers,
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "scheduler": cfg.serving.scheduler,
        "max_batch_size": cfg.serving.max_batch_size,
        "rate_limiter": "off (serving.rate_limit.enabled=false)",
        "max_queue_wait_s": cfg.serving.max_queue_wait_s,
        "prompt_tokens": w.prompt_tokens,
        "guidellm_prompt_text_tokens": prompt_text_tokens,
        "max_new_tokens": w.max_new_tokens,
        "threads": cfg.hardware.threads,
        "overrides": args.set,
        "smoke": args.smoke,
        "cpu_count": os.cpu_count(),
        "load_avg_1m_start": load_start,
        "load_avg_1m_end": load_average(),
        "rounds": rounds,
        **verdict,
    }
    (out / "guidellm.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'guidellm.json'}")
    return 0 if verdict["pass"] else 2


if __name__ == "__main__":
    sys.exit(main())
