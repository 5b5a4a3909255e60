"""The iris data and the blog's seeded train / val / test split."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np

NUM_FEATURES = 4
NUM_CLASSES = 3
DEFAULT_SPLIT_SEED = 666
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
_FRACTION_TOLERANCE = 1e-9


class Dataset(NamedTuple):
    x: np.ndarray  # float32 [n, 4]
    y: np.ndarray  # int32 [n]


class Split(NamedTuple):
    train: Dataset
    val: Dataset
    test: Dataset


def _bundled_iris_csv() -> Path | None:
    """scikit-learn's own copy of iris.csv, found without importing scikit-learn (~1 s)."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "iris.csv"
        if path.is_file():
            return path
    return None


@functools.cache
def _iris() -> tuple[np.ndarray, np.ndarray]:
    """The 150 iris rows bundled with scikit-learn (no network), as ``load_iris()`` gives them.

    ``load_iris`` parses the package's ``iris.csv`` (a header line, then four
    features and the class per row); reading that file directly gives the same
    numbers and keeps scikit-learn's import off the start-up path.
    """
    path = _bundled_iris_csv()
    if path is not None:
        # An open file, not a path: numpy would call abspath, which fails when the
        # working folder has been deleted.
        with open(path, encoding="ascii") as f:
            table = np.loadtxt(f, delimiter=",", skiprows=1, dtype=np.float64)
        data, target = table[:, :NUM_FEATURES], table[:, NUM_FEATURES]
    else:
        from sklearn.datasets import load_iris
        from sklearn.utils import Bunch

        bunch = load_iris()
        assert isinstance(bunch, Bunch)  # a tuple only with return_X_y=True
        data, target = bunch.data, bunch.target
    x = np.asarray(data, dtype=np.float32)
    y = np.asarray(target, dtype=np.int32)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _check_fractions(fractions: tuple[float, ...], n: int) -> None:
    if len(fractions) != 3:
        raise ValueError(f"fractions must be three numbers (train, val, test), got {fractions!r}")
    if any(not np.isfinite(f) or f < 0 for f in fractions):
        raise ValueError(f"fractions must be finite and non-negative, got {fractions!r}")
    if abs(sum(fractions) - 1.0) > _FRACTION_TOLERANCE:
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fractions)})")
    sizes = np.diff(_cut_points(fractions, n), prepend=0, append=n)
    if np.any(sizes == 0):
        names = [name for name, size in zip(Split._fields, sizes) if size == 0]
        raise ValueError(f"fractions {fractions!r} leave the {'/'.join(names)} split empty")


def _cut_points(fractions: tuple[float, ...], n: int) -> np.ndarray:
    """Where the shuffled ids are cut: int(n * 0.8) and int(n * 0.9) for the blog.

    The blog truncates n * fraction; the tiny epsilon keeps 0.7 + 0.2 from
    truncating to 134 when 135 is meant.
    """
    cumulative = np.cumsum(fractions[:2])
    return np.floor(n * cumulative + _FRACTION_TOLERANCE).astype(np.int64)


def split_ids(
    seed: int = DEFAULT_SPLIT_SEED,
    n: int = 150,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row ids of train / val / test, as the blog draws them.

    The blog calls ``np.random.seed(seed); np.random.shuffle(ids)``. A private
    ``RandomState(seed)`` draws the same permutation (same Mersenne Twister,
    same legacy shuffle) without touching numpy's global random state.
    """
    values = tuple(float(f) for f in fractions)
    _check_fractions(values, n)
    ids = np.arange(n)
    np.random.RandomState(seed).shuffle(ids)
    first, second = _cut_points(values, n)
    return ids[:first], ids[first:second], ids[second:]


def load_split(
    seed: int = DEFAULT_SPLIT_SEED,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> Split:
    """The iris data cut into train / val / test (120 / 15 / 15 by default)."""
    x, y = _iris()
    parts = split_ids(seed, len(x), fractions)
    return Split(*(Dataset(x[ids], y[ids]) for ids in parts))
