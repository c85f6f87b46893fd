"""Load runs in the files other tools read and write: perfkit's runs out as vLLM `bench serve` results, vLLM's and
guidellm's results in as perfkit's request rows, recomputed with perfkit's own definitions.

Out (`to_vllm`; `write_vllm` for every load run a stage keeps, which `perfkit export STAGE` calls): the shape
of `vllm bench serve --save-result --save-detailed`: the run's totals and rates,
mean/median/std/p99 of TTFT, TPOT, ITL and E2EL in ms, and per request `input_lens`, `output_lens`,
`ttfts` (s), `itls` (s, a list per request) and `errors` ("" for success), over the measured requests only
(warm-up left out, as vLLM leaves its warm-up out). perfkit adds what vLLM's format lacks, under
`perfkit_`-prefixed keys vLLM ignores: each request's send time, end-to-end seconds and status, the measured
window (a closed loop's opens at the last warm-up answer, and the warm-up rows stay out) and the goodput, so
a perfkit run read back gives the same figures. Names that differ between the tools: vLLM's TPOT and ITL are perfkit's; guidellm's
`inter_token_latency_ms` is TPOT (per request, first token excluded) and its `time_per_output_token_ms`
includes the TTFT: neither is ITL.

In (`read_result`): a vLLM result (per-request `ttfts` and `itls`: the chunk arrivals are rebuilt from
them) or a guidellm report (each benchmark's `requests.successful` / `errored` / `incomplete` records,
whose per-request timings give TTFT, E2E and the first and last token; guidellm keeps no per-chunk times,
so the chunks are spread evenly between them, its own convention, and the ITL is its per-request TPOT).
The rows go through `results.summarize`, so every figure is perfkit's definition over the other tool's
measurements; where a file holds no send times the window is its own `duration`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from perfkit.errors import PerfkitError
from perfkit.load.results import LoadSummary, RequestTiming, measured_window, summarize

if TYPE_CHECKING:
    from perfkit.load.runner import LoadRun

FORMAT_VERSION = 1  # of the perfkit_ keys


class ResultFormatError(PerfkitError, ValueError):
    """A file that is neither a vLLM bench serve result nor a guidellm report this code can read."""


def _stats(prefix: str, values_ms: Sequence[float]) -> dict[str, float]:
    if not values_ms:
        return {}
    a = np.asarray(values_ms, dtype=float)
    return {
        f"mean_{prefix}_ms": float(a.mean()),
        f"median_{prefix}_ms": float(np.median(a)),
        f"std_{prefix}_ms": float(a.std()),
        f"p99_{prefix}_ms": float(np.percentile(a, 99)),
    }


def to_vllm(
    timings: Sequence[RequestTiming], summary: LoadSummary, *, model: str, backend: str = "openai-chat", when: dt.datetime | None = None
) -> dict[str, Any]:
    """A measured run as vLLM's result JSON (the measured rows only), with perfkit's extras under `perfkit_` keys."""
    rows = [r for r in timings if not r.warmup]
    ok = [r for r in rows if r.ok]
    window = measured_window(timings, summary.mode)
    out: dict[str, Any] = {
        "date": (when or dt.datetime.now(dt.UTC)).strftime("%Y%m%d-%H%M%S"),
        "backend": backend,
        "model_id": model,
        "num_prompts": len(rows),
        "request_rate": "inf" if summary.mode == "closed" else None,
        "max_concurrency": summary.users if summary.mode == "closed" else None,
        "duration": summary.window_s,
        "completed": len(ok),
        "total_input_tokens": sum(r.prompt_tokens for r in ok),
        "total_output_tokens": sum(r.output_tokens for r in ok),
        "request_throughput": summary.throughput_rps,
        "request_goodput": summary.goodput.rate_rps if summary.goodput else None,
        "output_throughput": summary.throughput_tok_s,
        "total_token_throughput": summary.throughput_tok_s + summary.prompt_tok_s,
    }
    out |= _stats("ttft", [r.ttft_s * 1000 for r in ok if r.ttft_s is not None])
    out |= _stats("tpot", [t * 1000 for r in ok if (t := r.tpot_s) is not None])
    out |= _stats("itl", [g * 1000 for r in ok for g in r.itl_s])
    out |= _stats("e2el", [r.e2e_s * 1000 for r in ok])
    out |= {
        "input_lens": [r.prompt_tokens for r in rows],
        "output_lens": [r.output_tokens if r.ok else 0 for r in rows],
        "ttfts": [r.ttft_s if r.ok and r.ttft_s is not None else 0.0 for r in rows],
        "itls": [list(r.itl_s) if r.ok else [] for r in rows],
        "generated_texts": ["" for _ in rows],  # perfkit keeps timings, not texts
        "errors": ["" if r.ok else (r.error or f"HTTP {r.status}") for r in rows],
        "perfkit_format": FORMAT_VERSION,
        "perfkit_send_times": [r.t_send for r in rows],
        "perfkit_e2els": [r.e2e_s for r in rows],
        "perfkit_statuses": [r.status for r in rows],
        "perfkit_mode": summary.mode,
        "perfkit_users": summary.users,
        "perfkit_window": list(window),
    }
    if summary.goodput is not None:
        out |= {"perfkit_goodput_pct": 100 * summary.goodput.share, "perfkit_goodput_pct_low95": 100 * summary.goodput.share_low}
    return out


def file_name(run_name: str) -> str:
    """A run's export file name: its name with every run of characters outside [A-Za-z0-9.-] as one `_`."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", run_name).strip("_") + ".json"


def write_vllm(runs: Mapping[str, LoadRun], folder: Path, *, model: str) -> list[Path]:
    """Each run as `folder/<name>.json` in vLLM's result format (`to_vllm`), dated by its first send; the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [file_name(name) for name in runs]
    if len(set(names)) != len(names):
        raise ResultFormatError(f"run names {list(runs)} give clashing file names {names}")
    paths = []
    for name, run in zip(names, runs.values()):
        first = min((r.t_send for r in run.timings), default=0.0)
        data = to_vllm(run.timings, run.summary, model=model, when=dt.datetime.fromtimestamp(first, dt.UTC))
        path = folder / name
        path.write_text(json.dumps(data))
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Imported:
    """Another tool's run as perfkit reads it: which tool, its rows, and perfkit's summary of them."""

    tool: str
    rows: tuple[RequestTiming, ...]
    summary: LoadSummary
    note: str  # what could not be carried over exactly


def _from_vllm(data: Mapping[str, Any]) -> tuple[list[RequestTiming], str]:
    n = len(data["ttfts"])
    sends = data.get("perfkit_send_times") or [0.0] * n
    e2els = data.get("perfkit_e2els")
    statuses = data.get("perfkit_statuses")
    rows = []
    for i in range(n):
        error = data.get("errors", [""] * n)[i] or None
        ttft = float(data["ttfts"][i])
        chunks = tuple(itertools.accumulate((float(g) for g in data["itls"][i]), initial=ttft)) if not error else ()
        e2e = float(e2els[i]) if e2els else (chunks[-1] if chunks else 0.0)
        rows.append(
            RequestTiming(
                index=i,
                t_send=float(sends[i]),
                e2e_s=e2e,
                status=int(statuses[i]) if statuses else (0 if error else 200),
                ttft_s=None if error else ttft,
                output_tokens=int(data["output_lens"][i]),
                prompt_tokens=int(data["input_lens"][i]),
                done=not error,
                error=error,
                chunk_s=chunks,
            )
        )
    note = "" if "perfkit_send_times" in data else "vLLM's file holds no send times: the window is its duration"
    return rows, note


def _guidellm_row(i: int, record: Mapping[str, Any], status: str) -> RequestTiming:
    timings = (record.get("info") or {}).get("timings") or {}
    start = record.get("request_start_time") or timings.get("request_start") or 0.0
    end = record.get("request_end_time") or timings.get("request_end") or timings.get("resolve_end") or start
    first, last = timings.get("first_token_iteration"), timings.get("last_token_iteration")
    iterations = int(timings.get("token_iterations") or 0)
    chunks: tuple[float, ...] = ()
    if first is not None and last is not None and iterations >= 1:
        chunks = tuple(float(t) - start for t in np.linspace(first, last, num=iterations))
    ttft_ms = record.get("time_to_first_token_ms")
    ok = status == "successful"
    return RequestTiming(
        index=i,
        t_send=float(start),
        e2e_s=float(end) - float(start),
        status=200 if ok else 0,
        ttft_s=(ttft_ms / 1000.0) if ttft_ms is not None else (chunks[0] if chunks else None),
        output_tokens=int(record.get("output_tokens") or 0),
        prompt_tokens=int(record.get("prompt_tokens") or 0),
        done=ok,
        error=None if ok else status,
        chunk_s=chunks if ok else (),
    )


def _from_guidellm(data: Mapping[str, Any], benchmark: int) -> tuple[list[RequestTiming], str]:
    benches = data.get("benchmarks") or []
    if not 0 <= benchmark < len(benches):
        raise ResultFormatError(f"benchmark {benchmark}: the report holds {len(benches)} (0..{len(benches) - 1})")
    requests = benches[benchmark].get("requests") or {}
    counter = itertools.count()
    rows = [
        _guidellm_row(next(counter), r, status) for status in ("successful", "errored", "incomplete") for r in requests.get(status) or ()
    ]
    if not rows:
        raise ResultFormatError("the guidellm report keeps no per-request records (requests.successful): nothing to recompute")
    note = "guidellm keeps only each request's first and last token times: chunks are spaced evenly between them, its own convention"
    return rows, note


def read_result(data: Mapping[str, Any], *, benchmark: int = 0) -> Imported:
    """A vLLM bench serve result or a guidellm report, as perfkit's rows and summary (perfkit's definitions)."""
    if "ttfts" in data and "itls" in data:
        tool, (rows, note) = "vllm bench serve", _from_vllm(data)
        mode, users = data.get("perfkit_mode", "open"), int(data.get("perfkit_users") or data.get("max_concurrency") or 1)
    elif "benchmarks" in data:
        tool, (rows, note) = f"guidellm {(data.get('metadata') or {}).get('guidellm_version', '')}".strip(), _from_guidellm(data, benchmark)
        mode, users = "open", 1
    else:
        raise ResultFormatError("not a vLLM bench serve result (no ttfts/itls) nor a guidellm report (no benchmarks)")
    window = data.get("perfkit_window")
    summary = summarize(rows, mode=mode, users=users, window_edges=(window[0], window[1]) if window else None)
    duration = data.get("duration") if "ttfts" in data else None
    if duration and "perfkit_send_times" not in data:  # no send times: rates over the file's own duration
        answered = [r for r in rows if r.ok]
        summary = replace(
            summary,
            window_s=float(duration),
            throughput_rps=len(answered) / float(duration),
            throughput_tok_s=sum(r.output_tokens for r in answered) / float(duration),
            prompt_tok_s=sum(r.prompt_tokens for r in answered) / float(duration),
        )
    return Imported(tool, tuple(rows), summary, note)


COMPARED = (
    ("output tokens/s", lambda s: s.throughput_tok_s),
    ("requests/s", lambda s: s.throughput_rps),
    ("TTFT p50 (ms)", lambda s: s.ttft.p50 if s.ttft else None),
    ("TPOT p50 (ms)", lambda s: s.tpot.p50 if s.tpot else None),
    ("ITL p50 (ms)", lambda s: s.itl.latency.p50 if s.itl else None),
    ("E2E p50 (ms)", lambda s: s.e2e.p50 if s.e2e else None),
    ("error rate", lambda s: s.error_rate),
)


def side_by_side(runs: Mapping[str, LoadSummary]) -> list[dict[str, Any]]:
    """One row per figure, a column per run, and each run's ratio to the first (perfkit's own, when it leads)."""
    names = list(runs)
    out = []
    for label, get in COMPARED:
        values = {name: get(runs[name]) for name in names}
        row: dict[str, Any] = {"figure": label} | values
        base = values[names[0]]
        for name in names[1:]:
            v = values[name]
            row[f"{name} / {names[0]}"] = v / base if v is not None and base else None
        out.append(row)
    return out
