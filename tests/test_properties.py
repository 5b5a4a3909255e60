"""Property-based tests: the seeded split, the checkpoint round trip and the torch
state_dict round trip. (Damaged and hostile checkpoint files are fuzzed in
test_checkpoint_safety.)"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jax_iris.config import TrainConfig
from jax_iris.data import _iris, load_split, split_ids
from jax_iris.io import checkpoint
from jax_iris.models import flatten_params, param_shapes, unflatten_params
from jax_iris.pytorch import compat
from jax_iris.registry import blog_archs

SEEDS = st.integers(0, 2**32 - 1)  # numpy's legacy RandomState range
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def sizes(draw, n_min: int = 3, n_max: int = 400) -> tuple[int, int, int]:
    """Three positive split sizes with their total."""
    n = draw(st.integers(n_min, n_max))
    train = draw(st.integers(1, n - 2))
    val = draw(st.integers(1, n - train - 1))
    return train, val, n - train - val


def _check_partition(parts: tuple[np.ndarray, ...], n: int) -> None:
    everything = np.concatenate(parts)
    assert everything.dtype.kind == "i"
    np.testing.assert_array_equal(np.sort(everything), np.arange(n))  # disjoint and covering


@PROPERTY_SETTINGS
@given(seed=SEEDS, want=sizes())
def test_split_has_the_sizes_asked_and_is_a_partition(seed, want):
    n = sum(want)
    fractions = tuple(size / n for size in want)
    parts = split_ids(seed, n, fractions)
    assert tuple(len(p) for p in parts) == want
    _check_partition(parts, n)
    for again, part in zip(split_ids(seed, n, fractions), parts):
        np.testing.assert_array_equal(again, part)  # deterministic


@PROPERTY_SETTINGS
@given(
    seed=SEEDS,
    n=st.integers(3, 400),
    cuts=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2).map(sorted),
)
def test_any_fractions_cut_at_the_floor_or_are_refused(seed, n, cuts):
    """The blog truncates: train = int(n * f_train), train + val = int(n * (f_train + f_val))."""
    fractions = (cuts[0], cuts[1] - cuts[0], 1.0 - cuts[1])
    try:
        parts = split_ids(seed, n, fractions)
    except ValueError as err:
        assert "empty" in str(err)
        first, second = math.floor(n * cuts[0] + 1e-9), math.floor(n * cuts[1] + 1e-9)
        assert min(first, second - first, n - second) <= 0 or "sum" in str(err)
        return
    _check_partition(parts, n)
    assert all(len(p) > 0 for p in parts)
    for size, cut in ((len(parts[0]), cuts[0]), (len(parts[0]) + len(parts[1]), cuts[1])):
        assert n * cut - 1 < size <= n * cut + 1e-6


@PROPERTY_SETTINGS
@given(seed=SEEDS, want=sizes(n_min=150, n_max=150))
def test_load_split_rows_are_the_iris_rows_of_the_ids(seed, want):
    fractions = tuple(size / 150 for size in want)
    x, y = _iris()
    split = load_split(seed, fractions)
    for part, ids in zip(split, split_ids(seed, 150, fractions)):
        np.testing.assert_array_equal(part.x, x[ids])
        np.testing.assert_array_equal(part.y, y[ids])
    assert tuple(len(part.y) for part in split) == want


# ---------------------------------------------------------------- checkpoint round trip


@st.composite
def flat_params(draw, arch: str) -> dict[str, np.ndarray]:
    """``{"layer_1/k/kernel": array, ...}`` of the arch's shapes, any value a checkpoint may
    hold: finite, within float32's range (the loader refuses the rest; test_checkpoint_safety),
    subnormals and signed zeros included, float64 values not representable in float32 too."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    bound = float(np.finfo(np.float32).max)
    elements = st.floats(
        -bound,
        bound,
        allow_nan=False,
        allow_infinity=False,
        width=32 if dtype == np.float32 else 64,
    )
    return {
        name: draw(hnp.arrays(dtype, shape, elements=elements))
        for name, shape in param_shapes(arch).items()
    }


@st.composite
def checkpoints(draw):
    """Random params of the right shapes, a random config, history and metrics."""
    arch = draw(st.sampled_from(blog_archs()))
    flat = draw(flat_params(arch))
    epochs = draw(st.integers(1, 50))
    config = TrainConfig(
        arch=arch,
        epochs=epochs,
        lr=draw(st.floats(1e-8, 10.0)),
        weight_decay=draw(st.floats(0.0, 1.0)),
        seed=draw(SEEDS),
        split_seed=draw(SEEDS),
        log_every=draw(st.integers(1, 1000)),
        head=draw(st.sampled_from(["sigmoid", "logits"])),
    )
    history = {
        key: draw(hnp.arrays(np.float32, epochs, elements=st.floats(0, high, width=32)))
        for key, high in (("loss", 5.0), ("accuracy", 1.0))  # the loader's bounds
    }
    split_metrics = st.fixed_dictionaries({"loss": st.floats(0, 5), "accuracy": st.floats(0, 1)})
    metrics = draw(
        st.none() | st.fixed_dictionaries({s: split_metrics for s in ("train", "val", "test")})
    )
    return flat, config, history, metrics


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=checkpoints())
def test_checkpoint_round_trip_is_exact(case):
    flat, config, history, metrics = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.pkl"
        params = unflatten_params(flat)
        checkpoint.save(path, params, config=config, metrics=metrics, history=history)
        loaded = checkpoint.load(path)
        assert [p.name for p in Path(folder).iterdir()] == ["run.pkl"]  # no temp left
    assert loaded.arch == config.arch
    assert loaded.config == config
    assert loaded.metrics == metrics
    got = flatten_params(loaded.params)
    assert set(got) == set(flat)
    for name, value in flat.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape
        assert got[name].tobytes() == value.tobytes()  # bit-exact, NaN payloads included
    for key, value in history.items():
        np.testing.assert_array_equal(loaded.history[key], value)


# ---------------------------------------------------------------- torch state_dict round trip


@st.composite
def arch_and_params(draw) -> tuple[str, dict[str, np.ndarray]]:
    arch = draw(st.sampled_from(blog_archs()))
    return arch, draw(flat_params(arch))


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(case=arch_and_params())
def test_torch_state_dict_round_trip_is_exact(case):
    arch, flat = case
    state_dict = compat.state_dict_from_params(arch, unflatten_params(flat))
    assert list(state_dict) == list(compat.torch_shapes(arch))  # torch's key order
    for name, value in flat.items():
        torch_name = name.replace("/", ".").replace(".kernel", ".weight")
        expected = value.T if name.endswith("/kernel") else value  # torch weight is (out, in)
        assert state_dict[torch_name].tobytes() == np.ascontiguousarray(expected).tobytes()
        assert state_dict[torch_name].shape == expected.shape
    back = flatten_params(compat.params_from_state_dict(arch, state_dict))
    assert set(back) == set(flat)
    for name, value in flat.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        assert back[name].tobytes() == value.tobytes()
