"""Open-loop arrival times: a Poisson process conditioned on its count.

A load point draws few arrivals, and a seeded Poisson schedule of 30 can run long or short as a whole: one seed's
30 arrivals spanned 1.28x their expected time, so that every point of a capacity search (the same draws, scaled by
each rate) offered 78% of its nominal rate. Scaling the gaps so that the `count`-th arrival falls at count / rate
keeps the process's burstiness (the first count - 1 arrivals are then uniform order statistics over that span, as a
Poisson process's are given its count) and offers the nominal rate over the point.

Where the measured span is only part of the schedule (a multi-turn open loop measures after its conversations' ramp,
however long that lasts), the conditioning is done in blocks: every `block` arrivals end at their nominal time, so
that any span a few blocks long is offered the rate within about a block's arrivals.
"""

from __future__ import annotations

import itertools
import random


def poisson_arrivals(rng: random.Random, rate_rps: float, count: int, block: int | None = None) -> list[float]:
    """`count` arrival times (seconds from the start) of a Poisson process at `rate_rps`, the `block`-th, 2 x
    `block`-th, ... and the last arrival each at its nominal time (arrivals / rate_rps; `block` None: the last only)."""
    size = block or count or 1
    gaps = []
    for start in range(0, count, size):
        drawn = [rng.expovariate(rate_rps) for _ in range(min(size, count - start))]
        scale = len(drawn) / rate_rps / sum(drawn)
        gaps += [gap * scale for gap in drawn]
    return list(itertools.accumulate(gaps))
