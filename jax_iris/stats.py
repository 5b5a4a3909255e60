"""The statistics a seed sweep reports: summaries, success rates, paired differences."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP_RESAMPLES = 10_000
SUCCESS_ACCURACY = 0.9  # a net "escapes the plateau" when its train accuracy reaches this


class Summary(NamedTuple):
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for a single value
    median: float
    min: float
    max: float


class Proportion(NamedTuple):
    successes: int
    n: int
    rate: float
    low: float  # 95% Wilson score interval
    high: float


class PairedComparison(NamedTuple):
    n: int
    wins: float  # fraction of pairs where a > b
    ties: float  # fraction where a == b
    losses: float  # fraction where a < b
    mean_difference: float  # mean of a - b
    low: float  # 95% bootstrap percentile interval of the mean difference
    high: float


def summarize(values: np.ndarray) -> Summary:
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return Summary(
        float(values.mean()),
        std,
        float(np.median(values)),
        float(values.min()),
        float(values.max()),
    )


def wilson_interval(successes: int, n: int, z: float = Z_95) -> Proportion:
    """Success rate with its Wilson score interval (sound near 0 and 1, unlike p +- z*se)."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return Proportion(int(successes), int(n), p, max(0.0, centre - half), min(1.0, centre + half))


def success_rate(train_accuracy: np.ndarray, threshold: float = SUCCESS_ACCURACY) -> Proportion:
    # Accuracies are k/120 in float32; the tolerance keeps 108/120 = 0.9 a success.
    hits = int(np.sum(np.asarray(train_accuracy) >= threshold - 1e-6))
    return wilson_interval(hits, len(train_accuracy))


def paired_comparison(
    a: np.ndarray, b: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> PairedComparison:
    """How ``a`` compares with ``b`` on the same seeds: win/tie/loss shares, mean difference.

    The interval resamples the pairs with replacement (percentile bootstrap).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("paired comparison needs two 1-D arrays of the same, non-zero length")
    diff = a - b
    low, high = np.percentile(bootstrap_means(diff, resamples, seed), [2.5, 97.5])
    close = np.isclose(a, b, rtol=0, atol=1e-6)
    return PairedComparison(
        n=int(diff.size),
        wins=float(np.mean((diff > 0) & ~close)),
        ties=float(np.mean(close)),
        losses=float(np.mean((diff < 0) & ~close)),
        mean_difference=float(diff.mean()),
        low=float(low),
        high=float(high),
    )


class Interval(NamedTuple):
    mean: float
    low: float  # 95% bootstrap percentile interval of the mean
    high: float


def bootstrap_means(
    values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """Means of ``resamples`` resamples of ``values`` with replacement, in bounded memory."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # in blocks, so memory stays small for big sweeps
        stop = min(start + 1000, resamples)
        picks = rng.integers(0, values.size, size=(stop - start, values.size))
        means[start:stop] = values[picks].mean(axis=1)
    return means


def mean_interval(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES) -> Interval:
    """The mean with its 95% percentile-bootstrap interval."""
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("a mean interval needs a non-empty 1-D array")
    low, high = np.percentile(bootstrap_means(values, resamples), [2.5, 97.5])
    return Interval(float(values.mean()), float(low), float(high))
