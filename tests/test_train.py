import dataclasses
import functools

import jax
import numpy as np
import pytest

from jax_iris.data import load_split
from jax_iris.models import get_model, init_params
from jax_iris.train import (
    DivergenceError,
    TrainConfig,
    TrainState,
    as_batch,
    evaluate,
    fit,
    make_optimizer,
    make_train,
    run_epochs,
    train_step,
)

SHORT = 60  # epochs: enough for the loss to move, quick to compile and run


@pytest.fixture(scope="module")
def split():
    return load_split()


def _leaves(params):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(params)]


@pytest.mark.parametrize("arch", ["atten", "linear"])
def test_scan_equals_epoch_by_epoch_loop(arch, split):
    """The fused scan computes exactly what calling train_step once per epoch computes."""
    config = TrainConfig(arch=arch, epochs=SHORT, log_every=25)
    model = get_model(arch)
    optimizer = make_optimizer(config.lr, config.weight_decay)
    params = init_params(arch, jax.random.key(config.seed))
    state = TrainState(params, optimizer.init(params))
    batch = as_batch(split.train)

    step = jax.jit(functools.partial(train_step, model=model, optimizer=optimizer))
    losses = []
    for _ in range(SHORT):
        state, metrics = step(state, batch)
        losses.append(float(metrics.loss))

    result = fit(config, split=split)
    np.testing.assert_array_equal(result.history.loss, np.asarray(losses, np.float32))
    for a, b in zip(_leaves(result.params), _leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_fit_history_shape_and_loss_falls(split):
    result = fit(TrainConfig(arch="atten", epochs=200), split=split)
    assert result.history.loss.shape == (200,)
    assert result.history.accuracy.shape == (200,)
    assert result.history.loss[-1] < result.history.loss[0] - 0.05
    assert np.all((result.history.accuracy >= 0) & (result.history.accuracy <= 1))
    assert result.compile_seconds > 0 and result.train_seconds > 0


def test_fit_is_deterministic(split):
    config = TrainConfig(arch="linear", epochs=SHORT, seed=3)
    first, second = fit(config, split=split), fit(config, split=split)
    for a, b in zip(_leaves(first.params), _leaves(second.params)):
        assert a.tobytes() == b.tobytes()
    other = fit(dataclasses.replace(config, seed=4), split=split)
    assert not np.array_equal(_leaves(first.params)[0], _leaves(other.params)[0])


def test_fit_from_given_params(split):
    start = init_params("linear", jax.random.key(11))
    from_params = fit(TrainConfig(arch="linear", epochs=SHORT, seed=0), init_params=start)
    from_seed = fit(TrainConfig(arch="linear", epochs=SHORT, seed=11), split=split)
    np.testing.assert_array_equal(from_params.history.loss, from_seed.history.loss)


def test_progress_is_reported_every_log_every(split):
    seen = []
    fit(
        TrainConfig(arch="linear", epochs=SHORT, log_every=25),
        split=split,
        progress=lambda epoch, loss, acc: seen.append((epoch, loss, acc)),
    )
    assert [epoch for epoch, _, _ in seen] == [25, 50, 60]
    assert all(np.isfinite(loss) and 0 <= acc <= 1 for _, loss, acc in seen)


def test_make_train_is_the_same_computation(split):
    config = TrainConfig(arch="atten", epochs=SHORT)
    params, history = jax.jit(make_train(config))(jax.random.key(0), as_batch(split.train))
    result = fit(config, split=split)
    np.testing.assert_allclose(history.loss, result.history.loss, rtol=1e-6)
    for a, b in zip(_leaves(params), _leaves(result.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_divergence_is_detected(split):
    with pytest.raises(DivergenceError, match="diverged"):
        fit(TrainConfig(arch="atten", epochs=30, lr=1e30, log_every=10), split=split)


def test_evaluate_table(split):
    result = fit(TrainConfig(arch="linear", epochs=SHORT), split=split)
    table = evaluate("linear", result.params, split)
    assert set(table) == {"train", "val", "test"}
    for name, row in table.items():
        n = len(getattr(split, name).y)
        assert set(row) == {"loss", "accuracy"}
        assert row["loss"] > 0.5514  # softmax-CE of sigmoid outputs cannot go lower
        assert round(row["accuracy"] * n) == pytest.approx(row["accuracy"] * n, abs=1e-4)
    assert table["train"]["loss"] == pytest.approx(result.history.loss[-1], abs=5e-3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "mlp"}, "arch must be one of atten, linear"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"epochs": -5}, "epochs must be a positive integer"),
        ({"epochs": 2.5}, "epochs must be a positive integer"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"lr": float("inf")}, "lr must be a finite number > 0"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0"),
        ({"seed": -1}, "seed must be an integer from 0"),
        ({"split_seed": 2**32}, "split_seed must be an integer from 0"),
        ({"log_every": 0}, "log_every must be a positive integer"),
        ({"head": "tanh"}, "head must be one of sigmoid, logits"),
    ],
)
def test_config_validates_itself(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_config_round_trips_through_dict():
    config = TrainConfig(arch="linear", epochs=7, lr=0.01, head="logits")
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown config fields: colour"):
        TrainConfig.from_dict({**config.to_dict(), "colour": "red"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3


def test_run_epochs_stacks_metrics(split):
    model, optimizer = get_model("linear"), make_optimizer(0.005, 1e-3)
    params = init_params("linear", jax.random.key(0))
    state = TrainState(params, optimizer.init(params))
    _, metrics = jax.jit(
        functools.partial(run_epochs, num_epochs=5, model=model, optimizer=optimizer)
    )(state, as_batch(split.train))
    assert metrics.loss.shape == (5,) and metrics.accuracy.shape == (5,)
