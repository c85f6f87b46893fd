"""Open-loop arrival times: a Poisson process conditioned on its count.

A load point draws few arrivals, and a seeded Poisson schedule of 30 can run long or short as a whole: one seed's
30 arrivals spanned 1.28x their expected time, so that every point of a capacity search (the same draws, scaled by
each rate) offered 78% of its nominal rate. Scaling the gaps so that the `count`-th arrival falls at count / rate
keeps the process's burstiness (the first count - 1 arrivals are then uniform order statistics over that span, as a
Poisson process's are given its count) and offers the nominal rate over the point.
"""

from __future__ import annotations

import itertools
import random


def poisson_arrivals(rng: random.Random, rate_rps: float, count: int) -> list[float]:
    """`count` arrival times (seconds from the start) of a Poisson process at `rate_rps` whose last is at
    count / rate_rps."""
    gaps = [rng.expovariate(rate_rps) for _ in range(count)]
    if not gaps:
        return []
    scale = count / rate_rps / sum(gaps)
    return list(itertools.accumulate(gap * scale for gap in gaps))
