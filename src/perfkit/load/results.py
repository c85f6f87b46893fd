"""Exact per-request timings -> the numbers a load run reports.

Each row the locustfile writes is one request: wall-clock send time (the *scheduled* time in an
open loop), TTFT, E2E, token counts, HTTP status, and the arrival of every streamed chunk. From the
measured rows (warm-up rows dropped):
- latency distributions as `measure.Latency`: E2E over successful requests, TTFT, and TPOT =
  (E2E - TTFT) / (output tokens - 1), the decode speed one user sees; from the chunk arrivals, the
  inter-token latency pooled over requests and the time to second token, and the goodput against
  the `slo` bounds (`load.serving_metrics`);
- rates over the measured window: output tokens/s and requests/s of the successful requests,
  prompt tokens/s apart (prefill work, not generated text). A closed loop's window opens at the
  last warm-up answer: until then the server was still working on warm-up requests queued ahead
  of the first measured ones, and a window opened at the first measured send would charge that
  work to the measured requests (a queueing server then looked ~25% slower than it was,
  measured). Each request counts by the share of its output tokens produced inside the window
  (token times interpolated between its first and last token), so the rows a batching server had
  half done when the window opened count half, not whole. The open loop's window opens at the
  first send;
- the error rate, and errors counted by status code (0 = no HTTP answer at all), a 200 answer
  with fewer tokens than a fixed length asked for apart, as "truncated";
- Little's law: with N closed-loop users and no think time, QPS <= N / mean latency. A run whose
  throughput exceeds that bound has a clock or bookkeeping error, and a claim pair that breaks it
  (the seed's C10 and C11) cannot both be true;
- the generator's own health: schedule lag (open loop) and its CPU share, flagged when either
  could make the client, not the server, the bottleneck.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfkit.load.serving_metrics import Goodput, Quantiles, goodput, pooled_quantiles
from perfkit.load.timeslices import Slice, Trend, time_slices, trend
from perfkit.measure import Latency, littles_law_max_qps

LITTLE_TOLERANCE = 0.05  # clock skew, beside the window's one-answer edge


@dataclass(frozen=True)
class RequestTiming:
    """One request as the load generator saw it (seconds; `t_send` is epoch seconds)."""

    index: int
    t_send: float
    e2e_s: float
    status: int
    ttft_s: float | None = None
    output_tokens: int = 0
    prompt_tokens: int = 0
    lag_s: float = 0.0
    key: str = ""
    warmup: bool = False
    done: bool = False
    error: str | None = None
    retry_after_s: float | None = None  # the Retry-After header of a 429 or 503
    chunk_s: tuple[float, ...] = ()  # each streamed chunk's arrival, seconds from the send (the first is TTFT)
    conversation: int | None = None  # a multi-turn workload's conversation, and the request's turn in it
    turn: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.error is None

    @property
    def truncated(self) -> bool:
        return self.status == 200 and (self.error or "").startswith("truncated")

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def itl_s(self) -> tuple[float, ...]:
        """The gaps between consecutive chunks: the inter-token latencies this request's reader saw."""
        return tuple(b - a for a, b in zip(self.chunk_s, self.chunk_s[1:]))

    @property
    def ttst_s(self) -> float | None:
        """Time to the second chunk (None for a request streamed in fewer than two)."""
        return self.chunk_s[1] if len(self.chunk_s) > 1 else None


def read_timings(paths: Iterable[Path]) -> list[RequestTiming]:
    """Rows from the locustfile's JSONL files (one per Locust process), ordered by send time."""
    fields = set(RequestTiming.__dataclass_fields__)
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                raw: dict[str, Any] = json.loads(line)
                raw["chunk_s"] = tuple(raw.get("chunk_s") or ())
                rows.append(RequestTiming(**{k: v for k, v in raw.items() if k in fields}))
    return sorted(rows, key=lambda r: r.t_send)


@dataclass(frozen=True)
class LoadSummary:
    """What one load run measured; `as_metrics()` gives the docs/design.md §3 keys."""

    mode: str
    users: int
    requests: int
    ok_requests: int
    window_s: float
    e2e: Latency | None
    ttft: Latency | None
    tpot: Latency | None
    lag: Latency | None
    throughput_rps: float
    throughput_tok_s: float
    prompt_tok_s: float
    error_rate: float
    errors_by_code: dict[int, int] = field(default_factory=dict)
    truncated: int = 0
    client_cpu_pct: float = 0.0
    flags: tuple[str, ...] = ()
    itl: Quantiles | None = None  # None where no request streamed two chunks (or the rows carry no chunk times)
    ttst: Quantiles | None = None
    goodput: Goodput | None = None  # None where no objective was given
    slices: tuple[Slice, ...] = ()  # the window in time slices (`load.timeslices`); empty where none was asked for
    trend: Trend | None = None  # tokens/s over the slices (None under three slices)
    offered_rps: float | None = None  # the measured requests' arrival rate (`offered_rate`); None under two sends

    @property
    def littles_law_max_qps(self) -> float:
        return littles_law_max_qps(self.users, self.e2e.mean / 1000.0) if self.e2e else float("inf")

    @property
    def littles_law_holds(self) -> bool:
        """Whether the rate respects N / mean latency. A saturated closed loop sits *at* that bound, so the
        window's edges (one answer more or less among the k counted) and clock skew may put it a little over."""
        answers = max(1.0, self.throughput_rps * self.window_s)
        return self.throughput_rps <= self.littles_law_max_qps * (1 + LITTLE_TOLERANCE + 1 / answers)

    @property
    def p99_reliable(self) -> bool:
        return self.e2e is not None and self.e2e.p99_reliable

    def as_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "ok_requests": self.ok_requests,
            "window_s": self.window_s,
            "throughput_rps": self.throughput_rps,
            "throughput_tok_s": self.throughput_tok_s,
            "prompt_tok_s": self.prompt_tok_s,
            "error_rate": self.error_rate,
            "client_cpu_pct": self.client_cpu_pct,
            "p99_reliable": self.p99_reliable,
        }
        for prefix, lat in (("latency", self.e2e), ("ttft", self.ttft), ("tpot", self.tpot), ("lag", self.lag)):
            if lat is not None:
                out |= lat.as_metrics(prefix)
        for prefix, pooled in (("itl", self.itl), ("ttst", self.ttst)):
            if pooled is not None:
                out |= pooled.as_metrics(prefix)
        if self.goodput is not None:
            out |= self.goodput.as_metrics()
        if self.trend is not None:
            out |= self.trend.as_metrics()
        for code, count in sorted(self.errors_by_code.items()):
            out[f"errors_http_{code}"] = count
        if self.truncated:
            out["errors_truncated"] = self.truncated
        if self.mode == "closed":
            out["littles_law_max_qps"] = self.littles_law_max_qps
            out["littles_law_holds"] = self.littles_law_holds
        if self.flags:
            out["load_flags"] = "; ".join(self.flags)
        return out


def _median_text(q: Quantiles) -> str:
    low, high = q.p50_ci if q.p50_ci else (None, None)
    return f"{q.latency.p50:.1f} ms" + (f" (CI {low:.1f}–{high:.1f})" if low is not None else "")


def serving_text(summary: LoadSummary) -> str:
    """The per-token figures, goodput and steadiness in words: a sentence each stage's conclusion can carry."""
    parts = []
    if summary.itl is not None:
        lat = summary.itl.latency
        tail = f"p99 {lat.p99:.1f} ms" if lat.p99_reliable else f"max {lat.max:.1f} ms ({lat.count} gaps: too few for a p99)"
        parts.append(f"Between tokens (ITL, {lat.count} gaps pooled): p50 {_median_text(summary.itl)}, {tail}")
    if summary.ttst is not None:
        parts.append(f"second token at p50 {_median_text(summary.ttst)}")
    if summary.goodput is not None:
        parts.append(f"goodput {summary.goodput.text()}")
    if summary.trend is not None:
        parts.append(f"tokens/s over {summary.trend.slices} slices {summary.trend.direction}")
    return ("; ".join(parts) + ".") if parts else ""


def share_after(row: RequestTiming, start: float) -> float:
    """The share of a request's output tokens produced after `start` (epoch seconds).

    Token i of n is placed at TTFT + (E2E - TTFT) * i / (n - 1) from the send, the decode loop's
    even pace; a request without token times counts wholly by its answer time.
    """
    answered = row.t_send + row.e2e_s
    if row.ttft_s is None or row.output_tokens < 2:
        return 1.0 if answered > start else 0.0
    first = row.t_send + row.ttft_s
    if start < first:
        return 1.0
    if start >= answered:
        return 0.0
    done = math.floor((start - first) / (answered - first) * (row.output_tokens - 1)) + 1  # tokens at or before start
    return (row.output_tokens - done) / row.output_tokens


def measured_window(timings: Sequence[RequestTiming], mode: str) -> tuple[float, float]:
    """(start, end) epoch seconds of the measured window: a closed loop's opens at the last warm-up answer,
    an open loop's at the first measured send; it closes at the last measured answer."""
    rows = [r for r in timings if not r.warmup]
    if not rows:
        raise ValueError("no measured requests: every request was warm-up, or none completed")
    end = max(r.t_send + r.e2e_s for r in rows)
    warmup_answers = [r.t_send + r.e2e_s for r in timings if r.warmup]
    start = min(r.t_send for r in rows)
    if mode == "closed" and warmup_answers and max(warmup_answers) < end:
        start = max(warmup_answers)
    return start, end


def offered_rate(send_times: Sequence[float]) -> float | None:
    """The rate requests were sent at: n - 1 gaps over the span from the first send to the last (None under two
    sends, or all at once). An open loop's nominal rate is what it schedules; this is what it offered: for a
    conversation's later turns, which wait on the earlier answers, it is what the server's pace let the users send."""
    if len(send_times) < 2 or (span := max(send_times) - min(send_times)) <= 0:
        return None
    return (len(send_times) - 1) / span


def summarize(
    timings: Sequence[RequestTiming],
    *,
    mode: str,
    users: int,
    client_cpu_pct: float = 0.0,
    max_client_cpu_pct: float = 80.0,
    max_lag_ms: float = 20.0,
    objectives_ms: tuple[float, float] | None = None,
    slice_s: float | None = None,
    window_edges: tuple[float, float] | None = None,
) -> LoadSummary:
    """Distributions, rates, errors and generator checks over the measured (non-warm-up) rows; the goodput
    where `objectives_ms` gives the per-request (TTFT, TPOT) bounds; time slices of `slice_s` and their trend.
    `window_edges` (epoch seconds) replace the measured window where it is known from elsewhere (a run read back
    from a file)."""
    rows = [r for r in timings if not r.warmup]
    ok = [r for r in rows if r.ok]
    start, end = window_edges or measured_window(timings, mode)
    window = max(end - start, 1e-9)
    shares = [share_after(r, start) if r.ok else 0.0 for r in rows]  # a failed request delivered nothing
    good = goodput(rows, shares, window, *objectives_ms) if objectives_ms is not None else None
    errors = Counter(r.status for r in rows if not r.ok and not r.truncated)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpots = [t for r in ok if (t := r.tpot_s) is not None]
    lag = Latency.from_samples([r.lag_s for r in rows]) if mode == "open" else None
    flags = []
    if client_cpu_pct > max_client_cpu_pct:
        flags.append(f"load generator used {client_cpu_pct:.0f}% of a core (> {max_client_cpu_pct:.0f}%)")
    typical = statistics.median(r.e2e_s for r in ok) if ok else 0.0
    if mode == "closed" and window < typical:  # the window opens at the last warm-up answer: here, near the end
        flags.append(
            f"measured window {window:.2f} s shorter than the median request ({typical:.2f} s): the warm-up answers "
            f"overlapped the measured ones, so the rates are not a steady state (warm-up requests >= users fixes it)"
        )
    if lag is not None and lag.p99 > max_lag_ms:
        flags.append(f"open-loop schedule lag p99 {lag.p99:.1f} ms (> {max_lag_ms:.0f} ms)")
    slices = time_slices(ok, start, end, slice_s) if slice_s else []
    last_send = max((r.t_send for r in rows), default=start) - start  # after it the load only drains: not a trend to read
    steady = trend([s for s in slices if s.start_s + s.length_s <= last_send])
    if steady is not None and steady.flag():
        flags.append(steady.flag())
    return LoadSummary(
        mode=mode,
        users=users,
        requests=len(rows),
        ok_requests=len(ok),
        window_s=window,
        e2e=Latency.from_samples([r.e2e_s for r in ok]) if ok else None,
        ttft=Latency.from_samples(ttfts) if ttfts else None,
        tpot=Latency.from_samples(tpots) if tpots else None,
        lag=lag,
        throughput_rps=sum(shares) / window,
        throughput_tok_s=sum(share * r.output_tokens for share, r in zip(shares, rows)) / window,
        prompt_tok_s=sum(share * r.prompt_tokens for share, r in zip(shares, rows)) / window,
        error_rate=(len(rows) - len(ok)) / len(rows),
        errors_by_code=dict(errors),
        truncated=sum(r.truncated for r in rows),
        client_cpu_pct=client_cpu_pct,
        flags=tuple(flags),
        itl=pooled_quantiles([r.itl_s for r in ok]),
        ttst=pooled_quantiles([(t,) for r in ok if (t := r.ttst_s) is not None]),
        goodput=good,
        slices=tuple(slices),
        trend=steady,
        offered_rps=offered_rate([r.t_send for r in rows]),
    )
