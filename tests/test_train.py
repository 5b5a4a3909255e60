"""The training core: one scan equals the epoch-by-epoch loop, runs are reproducible,
hyperparameters are data (no recompilation), and evaluation follows the config's head."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SHORT_EPOCHS, leaves

from jax_iris import registry
from jax_iris import train as train_module
from jax_iris.config import TrainConfig
from jax_iris.data import load_split
from jax_iris.io import checkpoint
from jax_iris.models import get_model, init_params
from jax_iris.train import (
    SPLITS,
    DivergenceError,
    Hparams,
    as_batch,
    evaluate,
    fit,
    hparams_of,
    init_state,
    loss_and_accuracy,
    make_train,
    metrics_dict,
    metrics_from_dict,
    run_epochs,
    split_batches,
    train_step,
)

EPOCHS = SHORT_EPOCHS
SIGMOID_LOSS_FLOOR = 0.5514  # -log(e / (e + 2)): the least CE of outputs in (0, 1), 3 classes


@pytest.fixture(scope="module")
def split():
    return load_split()


@pytest.fixture(scope="module")
def batches(split):
    return split_batches(split)


def config_of(arch: str = "linear", **changes) -> TrainConfig:
    return TrainConfig(arch=arch, epochs=EPOCHS, log_every=EPOCHS, **changes)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["atten", "linear"])
def test_scan_equals_epoch_by_epoch_loop(arch, split):
    """The fused scan computes exactly what calling train_step once per epoch computes."""
    config = config_of(arch)
    hparams = hparams_of(config)
    start = init_state(init_params(arch, jax.random.key(config.seed)), hparams)
    batch = as_batch(split.train)
    model = get_model(arch)
    step = jax.jit(functools.partial(train_step, model=model))
    state, losses, accuracies = start, [], []
    for _ in range(EPOCHS):
        state, metrics = step(state, batch, hparams)
        losses.append(metrics.loss)
        accuracies.append(metrics.accuracy)

    scan = jax.jit(functools.partial(run_epochs, num_epochs=EPOCHS, model=model))
    scanned, history = scan(start, batch, hparams)
    np.testing.assert_array_equal(history.loss, np.asarray(losses))
    np.testing.assert_array_equal(history.accuracy, np.asarray(accuracies))
    for fitted, looped in zip(leaves(scanned.params), leaves(state.params)):
        assert fitted.tobytes() == looped.tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["atten", "linear"])
def test_fit_in_blocks_of_one_epoch_equals_one_block(arch, split):
    """fit's epoch blocks (log_every) never change a net: 20 blocks of 1 epoch (a loop XLA
    may inline) give the same bits as one block of 20."""
    one = fit(config_of(arch), split=split)
    many = fit(dataclasses.replace(config_of(arch), log_every=1), split=split)
    assert one.history.loss.tobytes() == many.history.loss.tobytes()
    for a, b in zip(leaves(one.params), leaves(many.params)):
        assert a.tobytes() == b.tobytes()
    assert one.final == many.final


def test_fit_is_deterministic_and_the_seed_matters(split):
    config = config_of(seed=3)
    first, second = fit(config, split=split), fit(config, split=split)
    for a, b in zip(leaves(first.params), leaves(second.params)):
        assert a.tobytes() == b.tobytes()
    assert first.history.loss.tobytes() == second.history.loss.tobytes()
    other = fit(dataclasses.replace(config, seed=4), split=split)
    assert not np.array_equal(leaves(first.params)[0], leaves(other.params)[0])


def test_fit_from_given_params_equals_fit_from_their_seed(split):
    start = init_params("linear", jax.random.key(11))
    from_params = fit(config_of(seed=0), init_params=start, split=split)
    from_seed = fit(config_of(seed=11), split=split)
    np.testing.assert_array_equal(from_params.history.loss, from_seed.history.loss)


@pytest.mark.slow
def test_progress_every_log_every_and_history_across_chunks(split):
    """Chunks of 8, 8 and 4 epochs: progress after each, one history of 20 epochs, the same
    numbers as a single chunk."""
    seen = []
    chunked = fit(
        TrainConfig(arch="linear", epochs=EPOCHS, log_every=8),
        split=split,
        progress=lambda epoch, loss, acc: seen.append((epoch, loss, acc)),
    )
    assert [epoch for epoch, _, _ in seen] == [8, 16, 20]
    for epoch, loss, acc in seen:
        assert loss == chunked.history.loss[epoch - 1]
        assert acc == chunked.history.accuracy[epoch - 1]
    whole = fit(config_of(), split=split)
    np.testing.assert_array_equal(chunked.history.loss, whole.history.loss)
    assert chunked.history.loss.dtype == np.float32
    assert chunked.compile_seconds > 0 and chunked.train_seconds > 0


@functools.cache
def jitted_train(arch: str):
    """``jax.jit(make_train(config))`` and the list it appends to each time it is traced."""
    train, traces = make_train(config_of(arch)), []

    def counted(key, batches, hparams):
        traces.append(hparams)
        return train(key, batches, hparams)

    return jax.jit(counted), traces


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["atten", "linear"])
def test_make_train_is_the_computation_fit_runs(arch, split, batches):
    config = config_of(arch)
    train, _ = jitted_train(arch)
    out = train(jax.random.key(0), batches, hparams_of(config))
    result = fit(config, split=split)
    np.testing.assert_allclose(out.history.loss, result.history.loss, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out.history.accuracy, result.history.accuracy)
    for traced, fitted in zip(leaves(out.params), leaves(result.params)):
        np.testing.assert_allclose(traced, fitted, rtol=0, atol=1e-6)
    for split_name in SPLITS:
        mine, theirs = getattr(out.final, split_name), getattr(result.final, split_name)
        assert float(mine.accuracy) == theirs.accuracy
        assert float(mine.loss) == pytest.approx(theirs.loss, abs=1e-6)


@pytest.mark.slow
def test_hyperparameters_are_traced_not_compiled_in(batches):
    """New learning rates and weight decays reuse the one compiled program, and they are
    really used: each gives another result."""
    train, traces = jitted_train("linear")
    runs = [
        train(jax.random.key(0), batches, Hparams(jnp.float32(lr), jnp.float32(wd)))
        for lr, wd in [(0.005, 1e-3), (0.05, 1e-3), (0.005, 0.5)]
    ]
    assert len(traces) == 1  # one trace, so one compiled program
    losses = [np.asarray(out.history.loss) for out in runs]
    assert not np.array_equal(losses[0], losses[1])  # lr is read
    assert not np.array_equal(losses[0], losses[2])  # weight decay is read
    assert losses[0][0] == losses[1][0]  # same start, same loss before the first update


def test_divergence_is_detected_with_its_epoch(split):
    with pytest.raises(DivergenceError, match=r"training diverged: .* epoch \d+"):
        fit(config_of("linear", lr=1e30), split=split)


def test_evaluate_gives_the_final_table(split):
    result = fit(config_of(), split=split)
    table = evaluate(config_of(), result.params, split)
    assert table == result.final
    assert table.train.loss == pytest.approx(result.history.loss[-1], abs=5e-3)
    for split_name in SPLITS:
        metrics = getattr(table, split_name)
        rows = len(getattr(split, split_name).y)
        assert metrics.loss > SIGMOID_LOSS_FLOOR
        correct = metrics.accuracy * rows
        assert correct == pytest.approx(round(correct), abs=1e-4)  # a count of rows
    assert metrics_from_dict(metrics_dict(table)) == table


@pytest.mark.slow
def test_evaluate_uses_the_configs_head(split, tmp_path):
    """A net trained with the logits head is evaluated with it: the loss of the raw outputs,
    not of their sigmoid (a checkpoint carries the head in its config)."""
    config = config_of("linear", head="logits")
    result = fit(config, split=split)
    path = checkpoint.save(tmp_path / "logits.pkl", result.params, config=config)
    loaded = checkpoint.load(path)
    table = evaluate(loaded.config, loaded.params, split)
    assert table == result.final

    x, y = jnp.asarray(split.val.x), jnp.asarray(split.val.y)
    logits = get_model("linear", "logits").apply(result.params, x)
    assert table.val.loss == pytest.approx(float(loss_and_accuracy(logits, y).loss), abs=1e-6)
    as_sigmoid = evaluate(dataclasses.replace(config, head="sigmoid"), result.params, split)
    assert abs(as_sigmoid.val.loss - table.val.loss) > 1e-3


# The switch between the epoch programs: each keeps a net one number ------------------

FUSED_VS_AUTODIFF_ATOL = 1e-6  # another rounding order, 20 float32 epochs (as SWEEP_VS_FIT)


@pytest.mark.slow
@pytest.mark.parametrize("use_fused", [True, False])
@pytest.mark.parametrize("arch", ["atten", "linear"])
def test_either_epoch_program_is_block_invariant_and_the_sweeps(arch, use_fused, monkeypatch):
    """Blocks of one epoch give the bits of one block, and net 2 of a sweep of 3 the bits of
    ``fit``, with the fused epochs and with autodiff's."""
    from jax_iris.sweep import train_seeds

    monkeypatch.setattr(train_module, "USE_FUSED", use_fused)
    one = fit(config_of(arch, seed=5))
    many = fit(dataclasses.replace(config_of(arch, seed=5), log_every=1))
    sweep = train_seeds(config_of(arch), [3, 4, 5], params=True, history=True)
    assert one.history.loss.tobytes() == many.history.loss.tobytes()
    assert one.history.loss.tobytes() == sweep.history.loss[2].tobytes()
    for a, b, c in zip(leaves(one.params), leaves(many.params), leaves(sweep.params)):
        assert a.tobytes() == b.tobytes() == c[2].tobytes()
    assert one.final == many.final
    assert one.final.test.loss == float(sweep.final.test.loss[2])


@pytest.mark.slow
@pytest.mark.parametrize("head", ["sigmoid", "logits"])
def test_fused_epochs_follow_autodiffs(head, split, monkeypatch):
    config = config_of("linear", head=head)
    monkeypatch.setattr(train_module, "USE_FUSED", True)
    fused_run = fit(config, split=split)
    monkeypatch.setattr(train_module, "USE_FUSED", False)
    autodiff_run = fit(config, split=split)
    np.testing.assert_allclose(
        fused_run.history.loss, autodiff_run.history.loss, rtol=0, atol=FUSED_VS_AUTODIFF_ATOL
    )
    np.testing.assert_array_equal(fused_run.history.accuracy, autodiff_run.history.accuracy)
    for a, b in zip(leaves(fused_run.params), leaves(autodiff_run.params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=FUSED_VS_AUTODIFF_ATOL)


@pytest.mark.slow
def test_an_arch_the_fused_program_does_not_serve_keeps_autodiff(split, monkeypatch):
    """A registered copy of the linear net is not served (``fused.supports``): the switch
    changes nothing of its run, bit for bit."""
    registry.register_arch("linear_copy", "Copy", "jax_iris.models:LinearNet")
    try:
        config = config_of("linear_copy")
        monkeypatch.setattr(train_module, "USE_FUSED", True)
        served = fit(config, split=split)
        monkeypatch.setattr(train_module, "USE_FUSED", False)
        plain = fit(config, split=split)
    finally:
        registry.unregister_arch("linear_copy")
    assert served.history.loss.tobytes() == plain.history.loss.tobytes()
    for a, b in zip(leaves(served.params), leaves(plain.params)):
        assert a.tobytes() == b.tobytes()
