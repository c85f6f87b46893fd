"""The hit-rate model of a cache's mean latency, fitted to the measured points.

mean(h) = h * t_hit + (1 - h) * t_miss. t_hit and t_miss come from the points with the lowest and
the highest measured hit rate (a straight line through the two); the points in between test it.
From the fit, the hit rate a target mean needs: h = (t_miss - target) / (t_miss - t_hit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HitRateModel:
    t_hit_ms: float
    t_miss_ms: float

    @classmethod
    def fit(cls, points: Sequence[tuple[float, float]]) -> HitRateModel | None:
        """From (hit rate, mean ms) pairs: the line through the lowest- and highest-hit-rate points."""
        if len(points) < 2:
            return None
        (h0, m0), (h1, m1) = min(points), max(points)
        if h1 - h0 < 0.2:
            return None
        slope = (m1 - m0) / (h1 - h0)
        t_miss = m0 - slope * h0
        return cls(t_miss + slope, t_miss)

    def predict_ms(self, hit_rate: float) -> float:
        return hit_rate * self.t_hit_ms + (1 - hit_rate) * self.t_miss_ms

    def needed_hit_rate(self, target_ms: float) -> float | None:
        """The hit rate at which the mean falls to `target_ms` (None if no hit rate in [0, 1] reaches it)."""
        if self.t_miss_ms <= self.t_hit_ms:
            return None
        h = (self.t_miss_ms - target_ms) / (self.t_miss_ms - self.t_hit_ms)
        return float(h) if 0 <= h <= 1 else None


def reduction_ci(before_ms: Sequence[float], after_ms: Sequence[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of 100 * (1 - mean(after) / mean(before)), resampling requests of each run."""
    rng = np.random.default_rng(seed)
    b, a = np.asarray(before_ms, dtype=float), np.asarray(after_ms, dtype=float)
    stats = [100 * (1 - rng.choice(a, len(a)).mean() / rng.choice(b, len(b)).mean()) for _ in range(n)]
    lo, hi = np.quantile(stats, [0.025, 0.975])
    return float(lo), float(hi)
