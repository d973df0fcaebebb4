"""Small-sample statistics for comparing runs over seeds: Student's t quantile and paired intervals. No scipy."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import numpy as np

CI_METHODS = ("paired_t", "bootstrap")


def _t_cdf(x: float, df: int) -> float:
    """P(T <= x) for x >= 0, by integrating Student's t density (Simpson's rule on a fine grid)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    grid = np.linspace(0.0, x, 20001)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid * grid / df))
    h = grid[1] - grid[0]
    integral = h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())
    return 0.5 + float(integral)


def t_quantile(q: float, df: int) -> float:
    """The q-quantile (q > 0.5) of Student's t with `df` degrees of freedom, e.g. t(0.975, 2) = 4.303."""
    if not 0.5 < q < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < q < 1 and df >= 1, got q={q}, df={df}")
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < q:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_cdf(mid, df) < q else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class PairedDifference:
    """Mean of per-seed differences (variant - baseline) with a confidence interval."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    level: float
    method: str

    @property
    def within_noise(self) -> bool:
        """The interval holds zero (or cannot be computed from one seed)."""
        return not (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict:
        return {**asdict(self), "within_noise": self.within_noise}


def paired_difference(variant: list[float], baseline: list[float], level: float = 0.95,
                      method: str = "paired_t", resamples: int = 10000, seed: int = 0) -> PairedDifference:
    """Paired difference over seeds: Student's t interval, or a percentile bootstrap of the mean difference."""
    if len(variant) != len(baseline) or not variant:
        raise ValueError("paired values need the same seeds on both sides")
    if method not in CI_METHODS:
        raise ValueError(f"unknown interval method '{method}' (choose from {', '.join(CI_METHODS)})")
    diffs = np.asarray(variant, float) - np.asarray(baseline, float)
    n, mean = len(diffs), float(diffs.mean())
    std = statistics.stdev(diffs.tolist()) if n > 1 else float("nan")
    if n < 2:
        return PairedDifference(n, mean, std, -math.inf, math.inf, level, method)
    if method == "paired_t":
        half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
        return PairedDifference(n, mean, std, mean - half, mean + half, level, method)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = diffs[draws].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return PairedDifference(n, mean, std, float(low), float(high), level, method)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
