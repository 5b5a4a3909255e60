"""The statistics of a sweep: summaries, Wilson intervals, bootstrap intervals, pairs."""

import numpy as np
import pytest

from jax_iris.stats import (
    bootstrap_means,
    mean_interval,
    paired_comparison,
    success_rate,
    summarize,
    wilson_interval,
)


def test_summarize():
    s = summarize(np.array([0.5, 1.0, 0.75, 0.25]))
    assert s.mean == pytest.approx(0.625)
    assert s.std == pytest.approx(np.std([0.5, 1.0, 0.75, 0.25], ddof=1))
    assert (s.median, s.min, s.max) == (0.625, 0.25, 1.0)
    assert summarize(np.array([0.3])).std == 0.0


def test_wilson_interval_known_values():
    # Reference values of the Wilson score interval (z = 1.96).
    p = wilson_interval(50, 100)
    assert p.rate == 0.5
    assert p.low == pytest.approx(0.4038, abs=1e-4) and p.high == pytest.approx(0.5962, abs=1e-4)
    zero = wilson_interval(0, 40)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.0876, abs=1e-4)
    full = wilson_interval(40, 40)
    assert full.high == 1.0 and full.low == pytest.approx(0.9124, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_success_rate_counts_exactly_point_nine():
    acc = np.array([108 / 120, 107 / 120, 1.0, 0.65], dtype=np.float32)
    p = success_rate(acc)
    assert (p.successes, p.n) == (2, 4)


def test_paired_comparison():
    rng = np.random.default_rng(1)
    b = rng.uniform(0, 1, 400)
    a = b + 0.1
    a[:100] = b[:100]  # a quarter ties
    result = paired_comparison(a, b)
    assert (result.wins, result.ties, result.losses) == (0.75, 0.25, 0.0)
    assert result.mean_difference == pytest.approx(0.075)
    assert result.low < 0.075 < result.high
    assert result.high - result.low < 0.02  # 400 pairs pin the mean down well
    again = paired_comparison(a, b)
    assert (again.low, again.high) == (result.low, result.high)  # seeded, reproducible


def test_paired_comparison_interval_covers_zero_for_noise():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=300), rng.normal(size=300)
    result = paired_comparison(a, b)
    assert result.low < 0 < result.high
    with pytest.raises(ValueError):
        paired_comparison(a, b[:10])


def test_bootstrap_means_resample_with_replacement_in_blocks():
    values = np.array([0.0, 1.0])
    means = bootstrap_means(values, resamples=2500, seed=3)  # 2500: three blocks, the last short
    assert means.shape == (2500,)
    assert set(np.unique(means)) <= {0.0, 0.5, 1.0}  # each mean is of two draws
    # With replacement: both extremes occur (about a quarter of the time each).
    assert 0.2 < np.mean(means == 0.0) < 0.3 and 0.2 < np.mean(means == 1.0) < 0.3
    np.testing.assert_array_equal(bootstrap_means(values, 2500, seed=3), means)


def test_mean_interval_brackets_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(4)
    small, large = rng.normal(0.5, 0.1, 25), rng.normal(0.5, 0.1, 2500)
    a, b = mean_interval(small), mean_interval(large)
    assert a.mean == pytest.approx(small.mean()) and a.low < a.mean < a.high
    assert b.low < 0.5 < b.high
    # The width of a 95% interval of a mean: about 2 * 1.96 * sd / sqrt(n).
    assert b.high - b.low == pytest.approx(2 * 1.96 * 0.1 / 50, rel=0.15)
    assert (a.high - a.low) > 5 * (b.high - b.low)
    np.testing.assert_allclose(mean_interval(np.full(7, 0.8)), 0.8, rtol=1e-12)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        mean_interval(np.array([]))
