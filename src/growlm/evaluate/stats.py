"""Confidence intervals for benchmark scores (95 % unless told otherwise)."""

from __future__ import annotations

import math
import random

Z95 = 1.959963984540054


def wilson_ci(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (better than the normal approximation near 0 and 1)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_ci(values: list[float], n_boot: int = 1000, seed: int = 0, weights: list[float] | None = None,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the (weighted) mean of ``values``."""
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"))
    w = weights or [1.0] * n
    rng = random.Random(seed)
    stats = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        tw = sum(w[i] for i in idx)
        stats.append(sum(values[i] * w[i] for i in idx) / tw if tw else float("nan"))
    stats.sort()
    lo = stats[int(math.floor(alpha / 2 * (n_boot - 1)))]
    hi = stats[int(math.ceil((1 - alpha / 2) * (n_boot - 1)))]
    return (lo, hi)


def runs_ci(values: list[float], z: float = Z95) -> tuple[float, float, float]:
    """Mean, std and half-width z*std/sqrt(n) over repeated runs (the paper's formula, population std)."""
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"), float("nan"))
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return mean, std, z * std / math.sqrt(n)


def mean_ci(values: list[float], z: float = Z95) -> dict:
    """The mean with its normal-approximation 95 % interval, mean +- z*sd/sqrt(n) (sample sd), as a JSON dict."""
    vals = [v for v in values if math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return {"value": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0}
    mean = sum(vals) / n
    half = z * math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1) / n) if n > 1 else float("nan")
    return {"value": mean, "ci95": [mean - half, mean + half], "n": n}


def proportion(k: float, n: int) -> dict:
    """A proportion with its Wilson 95 % interval, as a JSON-ready dict."""
    lo, hi = wilson_ci(k, n)
    return {"value": k / n if n else float("nan"), "ci95": [lo, hi], "n": n}
