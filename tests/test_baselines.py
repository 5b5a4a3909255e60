"""Baselines: their figures on the blog's split, the train table with their columns, and
the beat-the-baseline share worked by hand, on numbers and on a small sweep."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import SHORT_EPOCHS, call

from jax_iris import baselines
from jax_iris.cli import train
from jax_iris.config import TrainConfig
from jax_iris.data import load_split
from jax_iris.sweep import train_seeds

BLOG_SPLIT_SEED = 666
Z = 1.959963984540054  # two-sided 95% normal quantile


@pytest.fixture(scope="module")
def blog_split():
    return load_split(BLOG_SPLIT_SEED)


def counts(accuracy: baselines.Accuracy, split) -> tuple[int, ...]:
    return tuple(round(a * len(part.y)) for a, part in zip(accuracy, split))


def test_logistic_regression_on_the_blog_split(blog_split):
    assert tuple(len(part.y) for part in blog_split) == (120, 15, 15)
    assert counts(baselines.logistic_regression(blog_split), blog_split) == (119, 14, 14)


def test_majority_class_is_the_most_frequent_train_label(blog_split):
    got = baselines.majority_class(blog_split)
    label = np.bincount(blog_split.train.y).argmax()
    assert got == tuple(float(np.mean(part.y == label)) for part in blog_split)
    assert [round(a, 3) for a in got] == [0.35, 0.333, 0.2]  # 42/120, 5/15, 3/15: virginica


@pytest.mark.slow
def test_mlp_over_ten_seeds_on_the_blog_split(blog_split):
    fitted = baselines.fit_baselines(blog_split)
    assert fitted.mlp_seeds == tuple(range(10))
    assert [round(a, 3) for a in fitted.mlp] == [0.984, 1.0, 0.933]
    assert [round(s, 3) for s in fitted.mlp_std] == [0.010, 0.0, 0.0]
    one = baselines.mlp(blog_split, seed=fitted.mlp_seeds[4])
    assert baselines.mlp(blog_split, seed=fitted.mlp_seeds[4]) == one  # seeded: repeatable
    assert fitted.logistic_regression == baselines.logistic_regression(blog_split)


def wilson_by_hand(wins: int, n: int) -> tuple[float, float, float]:
    p = wins / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return p, centre - half, centre + half


def test_beat_share_by_hand():
    baseline = 14 / 15  # float64, as scikit-learn's accuracy
    nets = np.array([15, 14, 13, 15, 14], np.float32) / np.float32(15)  # as the nets report it
    # 15/15 beats it twice; float32 14/15 (0.93333334) is a tie, not a win.
    share, low, high = baselines.beat_share(nets, baseline)
    assert share == 2 / 5
    assert (low, high) == pytest.approx(wilson_by_hand(2, 5)[1:], abs=1e-12)
    assert (round(low, 4), round(high, 4)) == (0.1176, 0.7693)
    assert baselines.beat_share([0.9, 1.0], [1.0, 0.8]) == pytest.approx(
        (0.5, *wilson_by_hand(1, 2)[1:])
    )
    with pytest.raises(ValueError, match="non-empty 1-D"):
        baselines.beat_share([], baseline)


@pytest.mark.slow
def test_beat_share_on_a_small_sweep_with_a_split_per_net():
    seeds, split_seeds = [0, 1, 2, 3], [666, 1, 2, 3]
    config = TrainConfig(arch="atten", head="logits", epochs=SHORT_EPOCHS, log_every=SHORT_EPOCHS)
    sweep = train_seeds(config, seeds, split_seeds=split_seeds)
    nets = np.asarray(sweep.final.test.accuracy)
    per_net = baselines.logistic_test_accuracies(sweep.split_seeds)
    by_hand = [baselines.logistic_regression(load_split(s)).test for s in split_seeds]
    assert per_net.tolist() == by_hand
    wins = sum(float(a) > b + 1e-6 for a, b in zip(nets, by_hand))
    assert baselines.beat_share(nets, per_net) == pytest.approx(wilson_by_hand(wins, len(seeds)))


def table_cells(stdout: str) -> dict[tuple[str, str], list[str]]:
    """``{(metric, split): [cell text per column]}`` of the printed table ("-" kept)."""
    cells, metric = {}, None
    for line in stdout.splitlines():
        words = line.split()
        if words and words[0] in ("Loss", "Accuracy"):
            metric, words = words[0].lower(), words[1:]
        if metric and words and words[0].endswith("_Data"):
            cells[metric, words[0].removesuffix("_Data").lower()] = words[1:]
    return cells


@pytest.mark.slow
def test_train_prints_the_baselines_beside_the_nets(tmp_path, capsys, blog_split):
    argv = ["--epochs", SHORT_EPOCHS, "--log-every", SHORT_EPOCHS, "--baselines"]
    argv += ["--no-tensorboard", "--checkpoint-dir", tmp_path]
    outcome = call(train.main, argv, capsys)
    assert (outcome.code, outcome.err) == (0, "")
    header = next(line for line in outcome.out.splitlines() if line.startswith("metric"))
    assert header.split()[2:] == ["Atten_Model", "LogisticReg", "MLP(10,20)", "Majority"]
    cells = table_cells(outcome.out)
    assert len(cells) == 6
    logistic = baselines.logistic_regression(blog_split)
    majority = baselines.majority_class(blog_split)
    for i, split in enumerate(("train", "val", "test")):
        net, lr, mlp, most = cells["accuracy", split]
        assert (lr, most) == (f"{logistic[i]:.4f}", f"{majority[i]:.4f}")
        assert 0 <= float(net) <= 1 and 0 <= float(mlp) <= 1
        assert cells["loss", split][1:] == ["-", "-", "-"]
        assert float(cells["loss", split][0]) > 0
    assert "\nbaselines on the same split: LogisticReg = LogisticRegression(" in outcome.out
