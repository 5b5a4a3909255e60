import numpy as np
import pytest
from sklearn.datasets import load_iris

from jax_iris.data import load_split, split_ids


def _blog_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The blog's procedure, on numpy's global RNG, saving and restoring its state."""
    saved = np.random.get_state()
    try:
        ids = np.arange(150)
        np.random.seed(seed)
        np.random.shuffle(ids)
    finally:
        np.random.set_state(saved)
    return ids[:120], ids[120:135], ids[135:]


@pytest.mark.parametrize("seed", [666, 0, 12345])
def test_split_matches_legacy_numpy_shuffle(seed):
    iris = load_iris()
    split = load_split(seed)
    for part, ids in zip(split, _blog_split(seed)):
        np.testing.assert_array_equal(part.x, iris.data[ids].astype(np.float32))
        np.testing.assert_array_equal(part.y, iris.target[ids])


def test_split_sizes_and_dtypes():
    split = load_split()
    assert [len(part.x) for part in split] == [120, 15, 15]
    assert split.train.x.shape == (120, 4)
    assert split.train.x.dtype == np.float32
    assert split.train.y.dtype == np.int32


def test_default_split_is_the_blogs():
    train_ids, val_ids, test_ids = split_ids()
    blog = _blog_split(666)
    np.testing.assert_array_equal(train_ids, blog[0])
    np.testing.assert_array_equal(test_ids, blog[2])
    assert len(set(train_ids) | set(val_ids) | set(test_ids)) == 150


def test_split_leaves_global_rng_untouched():
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    load_split(666)
    split_ids(7, 150, (0.5, 0.25, 0.25))
    np.testing.assert_array_equal(np.random.random(3), expected)


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ((0.9, 0.2, -0.1), "non-negative"),
        ((0.5, 0.2, 0.2), "sum to 1"),
        ((1.0, 0.0, 0.0), "val/test split empty"),
        ((0.995, 0.004, 0.001), "empty"),
    ],
)
def test_bad_fractions_raise(fractions, message):
    with pytest.raises(ValueError, match=message):
        load_split(666, fractions)


def test_other_fractions_cut_where_asked():
    train_ids, val_ids, test_ids = split_ids(666, 150, (0.7, 0.2, 0.1))
    assert (len(train_ids), len(val_ids), len(test_ids)) == (105, 30, 15)
