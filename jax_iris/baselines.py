"""Standard classifiers on the nets' own split: what a reader of the blog's claim asks first.

- ``LogisticRegression(max_iter=1000)`` (scikit-learn's defaults otherwise: lbfgs,
  multinomial, L2 with C=1; deterministic);
- ``MLPClassifier((10, 20), max_iter=1000)``, the blog's hidden sizes with ReLU and
  Adam, seeded with ``random_state`` (scikit-learn's default of 200 iterations stops
  before convergence on iris, which left accuracies down to 0.73 on the blog split);
- the majority class of the train split.

Each is fitted on the train rows and scored on train / val / test, as the nets are.
``beat_share`` is the share of nets whose test accuracy beats a baseline's, with its
95% Wilson interval.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from jax_iris.data import Split, load_split
from jax_iris.stats import wilson_interval

LOGISTIC_MAX_ITER = 1000
MLP_HIDDEN = (10, 20)
MLP_MAX_ITER = 1000
MLP_SEEDS = tuple(range(10))
# Accuracies are k/15 or k/120, float32 for the nets and float64 here: 14/15 is 0.93333334
# in float32 and 0.9333333333 in float64. Closer than this is a tie, not a win.
TIE_TOLERANCE = 1e-6
LABELS = {"logistic_regression": "LogisticReg", "mlp": "MLP(10,20)", "majority_class": "Majority"}


class Accuracy(NamedTuple):
    train: float
    val: float
    test: float


class Baselines(NamedTuple):
    logistic_regression: Accuracy
    mlp: Accuracy  # mean over mlp_seeds
    mlp_std: Accuracy  # sample standard deviation over mlp_seeds (ddof=1; 0 for one seed)
    majority_class: Accuracy
    mlp_seeds: tuple[int, ...]


class BeatShare(NamedTuple):
    share: float  # fraction of nets whose test accuracy is above the baseline's
    low: float  # 95% Wilson score interval
    high: float


def _score(model: Any, split: Split) -> Accuracy:
    return Accuracy(*(float(np.mean(model.predict(part.x) == part.y)) for part in split))


def logistic_regression(split: Split) -> Accuracy:
    from sklearn.linear_model import LogisticRegression

    return _score(LogisticRegression(max_iter=LOGISTIC_MAX_ITER).fit(*split.train), split)


def mlp(split: Split, seed: int) -> Accuracy:
    """``MLPClassifier((10, 20))`` from ``random_state=seed``.

    A fit that has not converged after ``MLP_MAX_ITER`` iterations is scored as it
    stands (scikit-learn's ConvergenceWarning is silenced, not raised).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(MLP_HIDDEN, max_iter=MLP_MAX_ITER, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(*split.train)
    return _score(model, split)


def majority_class(split: Split) -> Accuracy:
    """Always the most frequent train label (the lowest label on a tie)."""
    label = int(np.bincount(split.train.y).argmax())
    return Accuracy(*(float(np.mean(part.y == label)) for part in split))


def fit_baselines(split: Split, mlp_seeds: Iterable[int] = MLP_SEEDS) -> Baselines:
    """All three baselines on ``split`` (the MLP once per seed: its mean and spread)."""
    seeds = tuple(int(s) for s in mlp_seeds)
    if not seeds:
        raise ValueError("mlp_seeds must hold at least one seed")
    runs = np.array([mlp(split, seed) for seed in seeds])  # [seeds, 3]
    std = runs.std(axis=0, ddof=1) if len(seeds) > 1 else np.zeros(3)
    return Baselines(
        logistic_regression(split),
        Accuracy(*runs.mean(axis=0).tolist()),
        Accuracy(*std.tolist()),
        majority_class(split),
        seeds,
    )


@functools.lru_cache(maxsize=4096)
def _logistic_test_accuracy(split_seed: int) -> float:
    return logistic_regression(load_split(split_seed)).test


def logistic_test_accuracies(split_seeds: Any) -> np.ndarray:
    """LogisticRegression's test accuracy on each net's split: float64 [nets].

    For a sweep whose nets each had their own split (``GridResult.split_seeds``);
    fitted once per distinct split seed.
    """
    seeds = np.asarray(split_seeds, np.int64)
    return np.array([_logistic_test_accuracy(int(s)) for s in seeds.tolist()], np.float64)


def beat_share(test_accuracies: Any, baseline_test_accuracy: Any) -> BeatShare:
    """Share of nets whose test accuracy is above the baseline's, with its 95% Wilson interval.

    ``baseline_test_accuracy`` is one number (every net on the same split) or one per
    net (each on its own split). A net within ``TIE_TOLERANCE`` of the baseline ties,
    which does not count as beating it.
    """
    nets = np.asarray(test_accuracies, np.float64)
    baseline = np.broadcast_to(np.asarray(baseline_test_accuracy, np.float64), nets.shape)
    if nets.ndim != 1 or nets.size == 0:
        raise ValueError("test_accuracies must be a non-empty 1-D array")
    wins = int(np.sum(nets > baseline + TIE_TOLERANCE))
    proportion = wilson_interval(wins, nets.size)
    return BeatShare(proportion.rate, proportion.low, proportion.high)


def table_columns(baselines: Baselines) -> dict[str, Any]:
    """Columns for ``report.tables.format_table``: accuracies, and no loss (shown as ``-``).

    Their losses are not the nets' loss (a softmax over sigmoids), so none is shown.
    """
    from jax_iris.train import Metrics, SplitMetrics

    columns = {}
    for field, label in LABELS.items():
        accuracy = getattr(baselines, field)
        columns[label] = SplitMetrics(*(Metrics(None, value) for value in accuracy))
    return columns


def table_note(baselines: Baselines) -> str:
    """What the baseline columns are, for the line under the table."""
    seeds = baselines.mlp_seeds
    span = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of {len(seeds)} seeds"
    std = "/".join(f"{s:.3f}" for s in baselines.mlp_std)
    return (
        f"baselines on the same split: {LABELS['logistic_regression']} ="
        f" LogisticRegression(max_iter={LOGISTIC_MAX_ITER}); {LABELS['mlp']} ="
        f" MLPClassifier({MLP_HIDDEN}, max_iter={MLP_MAX_ITER}), {span} (std {std});"
        f" {LABELS['majority_class']} = the train split's most frequent class; no loss (-)"
    )


def for_table(split: Split) -> tuple[dict[str, Any], str]:
    """The baselines fitted on ``split``, as ``format_table`` columns and the note below it."""
    fitted = fit_baselines(split)
    return table_columns(fitted), table_note(fitted)
