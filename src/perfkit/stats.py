"""The statistics behind every interval perfkit reports: the coefficient of variation, percentile-bootstrap intervals
(of one sample, of a ratio of two, of paired columns) and Student's t intervals over rounds. `measure.Spread` is the
one interval type that carries them; this module only computes."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import numpy as np

BOOTSTRAP_MIN = 20
# Two-sided 95% Student t quantiles by degrees of freedom (1..30); above 30 the normal 1.96 is within 4%.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t95(df: int) -> float:
    if df < 1:
        raise ValueError("a t interval needs at least two values")
    return _T95[df - 1] if df <= len(_T95) else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float] | None:
    """95% interval of the mean: t over the values below BOOTSTRAP_MIN of them, percentile bootstrap from there; None for one."""
    n = len(values)
    if n < 2:
        return None
    if n >= BOOTSTRAP_MIN:
        return bootstrap_ci(values, stat=np.mean)
    mean = statistics.fmean(values)
    half = t95(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation of a sample (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean else 0.0


def bootstrap_ci(
    values: Sequence[float], stat: Callable[[np.ndarray], float] = np.median, level: float = 0.95, n: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of `stat` over `values`."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    stats = np.array([stat(rng.choice(data, size=len(data), replace=True)) for _ in range(n)])
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ratio(
    a: Sequence[float],
    b: Sequence[float],
    stat: Callable[[np.ndarray], float] = np.median,
    level: float = 0.95,
    n: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """`stat(a) / stat(b)` of two independent samples (e.g. two variants' latencies) with a percentile-bootstrap
    interval, each sample resampled on its own: (value, low, high)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(x) or not len(y):
        raise ValueError("bootstrap_ratio: both samples must be non-empty")
    rng = np.random.default_rng(seed)
    stats = np.array([stat(rng.choice(x, len(x))) / stat(rng.choice(y, len(y))) for _ in range(n)])
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(stat(x) / stat(y)), float(lo), float(hi)


def bootstrap_paired(
    columns: Sequence[np.ndarray], stat: Callable[..., np.ndarray], level: float = 0.95, n: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """`stat` of paired samples with a percentile-bootstrap interval: (value, low, high).

    The columns are measurements of the same items (e.g. one per held-out token, for two models);
    each resample draws items, keeping their columns together, so an interval on a ratio or a
    difference of two models' means reflects their shared items. `stat` receives the columns as
    arrays of shape (resamples, items) and returns one value per resample (e.g. `lambda s, t:
    s.mean(1) / t.mean(1)`).
    """
    data = [np.asarray(c, dtype=float) for c in columns]
    size = len(data[0])
    if size == 0 or any(len(c) != size for c in data):
        raise ValueError("bootstrap_paired: columns must be non-empty and of equal length")
    value = float(stat(*(c[None, :] for c in data))[0])
    rng = np.random.default_rng(seed)
    stats = []
    for chunk in range(0, n, 250):  # bounded memory: 250 resamples of every item at a time
        idx = rng.integers(0, size, size=(min(250, n - chunk), size))
        stats.append(np.asarray(stat(*(c[idx] for c in data)), dtype=float))
    alpha = (1.0 - level) / 2
    lo, hi = np.nanquantile(np.concatenate(stats), [alpha, 1.0 - alpha])
    return value, float(lo), float(hi)


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its 95% t-interval over independent rounds: (mean, low, high); nan bounds below two rounds."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = t95(len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half
