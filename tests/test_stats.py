import numpy as np
import pytest

from jax_iris.stats import paired_comparison, success_rate, summarize, wilson_interval


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
