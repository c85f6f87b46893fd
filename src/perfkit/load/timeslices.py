"""A load run's figures per time slice, and the trend over the slices: warm-up, drift and degradation hide in
whole-run aggregates (AIPerf reports timeslices, MLPerf sets a minimum duration for the same reason).

The measured window is cut into slices of `load.timeslice_s`. Each slice gets the output tokens that
arrived inside it (every streamed chunk placed at its arrival; rows without chunk times have their
tokens spread evenly between first and last token), the requests answered inside it, the p50 time
to first token of the requests sent inside it, and the p50 gap between chunks arriving inside it.
The trend is the least-squares slope of tokens/s over the slices' midpoints, relative to the mean
rate, in % per minute, with its 95% t interval (a 10 s slice holds only a few requests here, so a
slope is called only when its interval excludes 0): rising says the warm-up was not done when
measuring began, falling says the server drifted or degraded over the run. The trend reads only the
part of the window before the last request was sent (`results.summarize`): after it the load drains,
which no trend should read as degradation. A partial last slice (under half a slice) is merged into
the one before it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from perfkit.stats import t95

if TYPE_CHECKING:
    from perfkit.load.results import RequestTiming

MIN_SLICES = 3  # a slope over fewer is not a trend


@dataclass(frozen=True)
class Slice:
    start_s: float  # from the window's start
    length_s: float
    tokens: float
    answered: int
    ttft_ms_p50: float | None  # of the requests sent in the slice
    itl_ms_p50: float | None  # of the gaps that ended in the slice

    @property
    def tok_s(self) -> float:
        return self.tokens / self.length_s

    def row(self) -> dict[str, Any]:
        return {
            "slice_start_s": self.start_s,
            "slice_s": self.length_s,
            "tok_s": self.tok_s,
            "answered": self.answered,
            "ttft_ms_p50": self.ttft_ms_p50,
            "itl_ms_p50": self.itl_ms_p50,
        }


@dataclass(frozen=True)
class Trend:
    """The slope of tokens/s over the run, % of the mean rate per minute, with its 95% interval."""

    pct_per_min: float
    ci: tuple[float, float]
    slices: int

    @property
    def direction(self) -> str:
        """ "rising", "falling", or "flat" where the interval holds 0."""
        low, high = self.ci
        return "rising" if low > 0 else "falling" if high < 0 else "flat"

    def flag(self) -> str:
        """A load flag where the run was not steady; "" where it was (or could not be shown otherwise)."""
        if self.direction == "flat":
            return ""
        cause = "the warm-up was not done" if self.direction == "rising" else "drift or degradation over the run"
        low, high = self.ci
        return f"tokens/s {self.direction} {self.pct_per_min:+.0f}%/min over {self.slices} slices (CI {low:+.0f} to {high:+.0f}): {cause}"

    def as_metrics(self) -> dict[str, Any]:
        low, high = self.ci
        return {
            "trend_tok_s_pct_per_min": self.pct_per_min,
            "trend_tok_s_pct_per_min_ci_low": low,
            "trend_tok_s_pct_per_min_ci_high": high,
            "trend": self.direction,
        }


def token_arrivals(row: RequestTiming) -> list[tuple[float, float]]:
    """(epoch seconds, tokens) of each arrival: its chunks, or its tokens spread evenly from first to last."""
    if row.ttft_s is None or row.output_tokens < 1:
        return []
    if row.chunk_s:
        each = row.output_tokens / len(row.chunk_s)
        return [(row.t_send + t, each) for t in row.chunk_s]
    first, last = row.t_send + row.ttft_s, row.t_send + row.e2e_s
    steps = max(row.output_tokens - 1, 1)
    return [(first + (last - first) * i / steps, 1.0) for i in range(row.output_tokens)]


def slice_edges(start: float, end: float, slice_s: float) -> list[float]:
    """Edges from `start` every `slice_s` to `end`; a last slice under half a slice joins the one before."""
    count = max(1, math.floor((end - start) / slice_s))
    if (end - start) - count * slice_s >= slice_s / 2:
        count += 1
    return [start + i * slice_s for i in range(count)] + [end]


def time_slices(rows: Sequence[RequestTiming], start: float, end: float, slice_s: float) -> list[Slice]:
    """The window [start, end] of the measured, successful `rows` in slices of `slice_s` seconds."""
    edges = slice_edges(start, end, slice_s)
    out = []
    for lo, hi in zip(edges, edges[1:]):
        tokens = sum(n for r in rows for t, n in token_arrivals(r) if lo <= t < hi or (hi == end and t == end))
        answered = sum(lo <= r.t_send + r.e2e_s < hi or (hi == end and r.t_send + r.e2e_s == end) for r in rows)
        ttfts = [r.ttft_s * 1000 for r in rows if r.ttft_s is not None and lo <= r.t_send < hi]
        gaps = [(b - a) * 1000 for r in rows for a, b in zip(r.chunk_s, r.chunk_s[1:]) if lo <= r.t_send + b < hi]
        out.append(
            Slice(
                lo - start, hi - lo, tokens, answered, float(np.median(ttfts)) if ttfts else None, float(np.median(gaps)) if gaps else None
            )
        )
    return out


def trend(slices: Sequence[Slice]) -> Trend | None:
    """The least-squares slope of tokens/s over the slices' midpoints; None under `MIN_SLICES` slices or no tokens."""
    if len(slices) < MIN_SLICES:
        return None
    x = np.array([s.start_s + s.length_s / 2 for s in slices]) / 60.0  # minutes
    y = np.array([s.tok_s for s in slices])
    mean = float(y.mean())
    if mean <= 0:
        return None
    dx = x - x.mean()
    slope = float((dx * (y - mean)).sum() / (dx**2).sum())
    residuals = y - (mean + slope * dx)
    se = math.sqrt(float((residuals**2).sum()) / (len(y) - 2) / float((dx**2).sum()))
    half = t95(len(y) - 2) * se
    scale = 100.0 / mean
    return Trend(slope * scale, ((slope - half) * scale, (slope + half) * scale), len(slices))
