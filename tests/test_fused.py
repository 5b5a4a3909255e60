"""The fused program (``jax_iris.fused``) against the one training core it restates.

In layers: the flat state (params, Adam's moments and count) converts both ways bit for
bit; the hand-written gradient equals autodiff's through the Flax modules; ``run_epochs``
equals ``train.run_epochs`` (autodiff + optax) in float64 over 50 epochs, and in float32
over 200.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_iris import fused, registry
from jax_iris.data import load_split
from jax_iris.models import get_model, init_params, param_shapes
from jax_iris.train import Hparams, as_batch, init_state, loss_and_accuracy, run_epochs

ARCHS = ("atten", "linear")
HEADS = ("sigmoid", "logits")
SEEDS = (0, 1, 2)
# torch's init draws |w| <= 1/sqrt(fan_in); x3 drives the gates and the sigmoid head toward
# saturation (large logits, peaked softmaxes) while every gradient stays measurable: at x10
# the linear net's sigmoid head saturates and its float64 gradient is exactly zero.
SCALES = (1.0, 3.0)
LR, WEIGHT_DECAY = 0.005, 1e-3  # the blog's
GRAD_RTOL = 1e-6  # the bar; float64 rounding alone gives ~1e-15
# Same maths, another rounding order (hand-written backward, one flat Adam): float64 keeps
# 50 epochs apart by rounding alone, ~1e-15 a step, well under this.
FLOAT64_RTOL = 1e-12
# float32: another rounding order costs a few ulps a step. While a net sits on its plateau
# the losses stay within ~1e-5 (seeds 0-7, every arch and head, 200 epochs); where a net
# leaves it the gap is amplified (2.5e-3 by epoch 167 measured, attention net, seed 2),
# as much as autodiff's own run drifts when its initial weights move by one ulp (NUDGE).
# So: 1e-4 over the first 100 epochs; over 200, 1e-4 plus CHAOS_FACTOR times that drift.
FLOAT32_LOSS_ATOL = 1e-4
NUDGE = 2.0**-23  # one float32 ulp at 1
CHAOS_FACTOR = 4.0  # gap / drift measured up to ~2 (seeds 0-7, each arch and head)


init = jax.jit(init_params, static_argnums=(0, 2))
fused_epochs = jax.jit(fused.run_epochs, static_argnums=(0, 1, 7))


def random_params(arch: str, seed: int, scale: float, dtype=jnp.float32):
    """torch-style params, each leaf multiplied by ``scale`` and nudged off torch's grid."""
    params = init(arch, jax.random.key(seed), dtype)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    noise = [jax.random.normal(k, leaf.shape, dtype) for k, leaf in zip(keys, leaves)]
    return tree.unflatten([scale * (leaf + 0.1 * n) for leaf, n in zip(leaves, noise)])


def train_batch(dtype):
    return as_batch(load_split().train, dtype)


def assert_trees_equal(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_supports_the_built_in_nets_and_heads_only():
    assert all(fused.supports(arch, head) for arch in ARCHS for head in HEADS)
    assert not fused.supports("no_such_arch", "sigmoid")
    assert not fused.supports("atten", "no_such_head")
    registry.register_arch("atten_copy", "Copy", "jax_iris.models:AttentionNet")
    try:
        assert not fused.supports("atten_copy", "sigmoid")  # unknown to the fused program
    finally:
        registry.unregister_arch("atten_copy")


def test_an_arch_name_registered_again_with_another_module_is_not_served(monkeypatch):
    other = dataclasses.replace(registry.ARCHS["linear"], module="jax_iris.models:AttentionNet")
    monkeypatch.setitem(registry.ARCHS, "linear", other)
    assert not fused.supports("linear", "sigmoid")
    with pytest.raises(ValueError, match="does not serve arch 'linear'"):
        fused.run_epochs("linear", "sigmoid", None, None, None, 0.1, 0.0, 1)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_flat_vector_holds_every_parameter(arch):
    sizes = [int(np.prod(shape)) for shape in param_shapes(arch).values()]
    state = fused.to_state(arch, init(arch, jax.random.key(0), jnp.float32))
    assert state.w.shape == state.m.shape == state.v.shape == (fused.num_params(arch),)
    assert fused.num_params(arch) == sum(sizes)
    assert state.count.dtype == jnp.int32 and int(state.count) == 0
    assert not state.m.any() and not state.v.any()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_is_bitwise_with_the_optimiser_state(arch, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        params = random_params(arch, 3, 10.0, dtype)
        hparams = Hparams(jnp.asarray(LR, dtype), jnp.asarray(WEIGHT_DECAY, dtype))
        state, _ = run_epochs(
            init_state(params, hparams), train_batch(dtype), hparams, 3, get_model(arch)
        )
        flat = fused.to_state(arch, state.params, state.opt_state)
        assert flat.w.dtype == dtype and int(flat.count) == 3
        assert_trees_equal(fused.to_params(arch, flat), state.params)
        adam = state.opt_state[1][0]
        assert_trees_equal(fused.to_params(arch, flat._replace(w=flat.m)), adam.mu)
        assert_trees_equal(fused.to_params(arch, flat._replace(w=flat.v)), adam.nu)
        assert_trees_equal(fused.to_state(arch, fused.to_params(arch, flat)).w, flat.w)
        # Back into optax's structure, from a fresh state's as the template: every leaf of
        # the trained one, bit for bit, and the trip repeated changes nothing.
        fresh = init_state(params, hparams).opt_state
        restored = fused.to_opt_state(arch, flat, fresh)
        assert_trees_equal(restored, state.opt_state)
        again = fused.to_state(arch, fused.to_params(arch, flat), restored)
        assert_trees_equal(fused.to_opt_state(arch, again, state.opt_state), state.opt_state)


@functools.cache
def autodiff_grad(arch: str, head: str):
    model = get_model(arch, head)

    def loss(params, x, y):
        return loss_and_accuracy(model.apply(params, x), y).loss

    return jax.jit(jax.value_and_grad(loss))


fused_grad = jax.jit(fused.loss_and_grad, static_argnums=(0, 1))


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_equals_autodiffs_in_float64(arch, head):
    with jax.enable_x64(True):
        batch = train_batch(jnp.float64)
        onehot = jax.nn.one_hot(batch.y, 3, dtype=jnp.float64, axis=0)
        for seed in SEEDS:
            for scale in SCALES:
                params = random_params(arch, seed, scale, jnp.float64)
                loss, grads = autodiff_grad(arch, head)(params, batch.x, batch.y)
                expected = np.asarray(fused.to_state(arch, grads).w)
                w = fused.to_state(arch, params).w
                metrics, grad = fused_grad(arch, head, w, jnp.asarray(batch.x).T, onehot)
                grad = np.asarray(grad)
                assert grad.dtype == np.float64 and np.abs(expected).max() > 1e-4
                # Relative to the gradient's size: a component that is ~0 is held to that.
                error = np.max(np.abs(grad - expected)) / np.max(np.abs(expected))
                assert error < GRAD_RTOL, f"{arch} {head} seed {seed} x{scale}: {error:.2e}"
                np.testing.assert_allclose(float(metrics.loss), float(loss), rtol=1e-14)


def autodiff_run(arch: str, head: str, params, epochs: int):
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    hparams = Hparams(jnp.asarray(LR, dtype), jnp.asarray(WEIGHT_DECAY, dtype))
    return jax.jit(run_epochs, static_argnums=(3, 4))(
        init_state(params, hparams), train_batch(dtype), hparams, epochs, get_model(arch, head)
    )


def compare_runs(arch: str, head: str, seed: int, epochs: int, dtype):
    """(autodiff's final state as a FusedState, its history, the fused state, its history)."""
    params = init(arch, jax.random.key(seed), dtype)
    batch = train_batch(dtype)
    hparams = Hparams(jnp.asarray(LR, dtype), jnp.asarray(WEIGHT_DECAY, dtype))
    expected, expected_history = autodiff_run(arch, head, params, epochs)
    state, history = fused_epochs(
        arch, head, fused.to_state(arch, params), batch.x, batch.y, *hparams, epochs
    )
    expected = fused.to_state(arch, expected.params, expected.opt_state)
    return expected, expected_history, state, history


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch", ARCHS)
def test_50_epochs_equal_autodiff_and_optax_in_float64(arch, head):
    with jax.enable_x64(True):
        for seed in SEEDS:
            expected, expected_history, state, history = compare_runs(
                arch, head, seed, 50, jnp.float64
            )
            assert history.loss.shape == history.accuracy.shape == (50,)
            np.testing.assert_allclose(history.loss, expected_history.loss, rtol=FLOAT64_RTOL)
            np.testing.assert_array_equal(history.accuracy, expected_history.accuracy)
            for name in ("w", "m", "v"):
                got, want = np.asarray(getattr(state, name)), np.asarray(getattr(expected, name))
                scale = np.max(np.abs(want))
                assert np.max(np.abs(got - want)) <= FLOAT64_RTOL * scale, (arch, head, seed, name)
            assert int(state.count) == int(expected.count) == 50


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch", ARCHS)
def test_200_epochs_agree_with_autodiff_in_float32(arch, head):
    for seed in SEEDS:
        _, expected_history, state, history = compare_runs(arch, head, seed, 200, jnp.float32)
        assert state.w.dtype == jnp.float32
        loss, expected = np.asarray(history.loss), np.asarray(expected_history.loss)
        np.testing.assert_allclose(loss[:100], expected[:100], rtol=0, atol=FLOAT32_LOSS_ATOL)
        # How far autodiff drifts from itself when every initial weight moves by one ulp.
        params = init(arch, jax.random.key(seed), jnp.float32)
        nudged = jax.tree_util.tree_map(lambda p: p * (1 + NUDGE), params)
        own = np.asarray(autodiff_run(arch, head, nudged, 200)[1].loss)
        bound = FLOAT32_LOSS_ATOL + CHAOS_FACTOR * np.max(np.abs(own - expected))
        gap = np.max(np.abs(loss - expected))
        assert gap <= bound, f"{arch} {head} seed {seed}: {gap:.2e} > {bound:.2e}"


@pytest.mark.slow
def test_a_fresh_state_is_optaxs_init():
    params = init("atten", jax.random.key(0), jnp.float32)
    optimiser = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.adam(LR))
    from_optax = fused.to_state("atten", params, optimiser.init(params))
    assert_trees_equal(fused.to_state("atten", params), from_optax)


@pytest.mark.slow
def test_to_opt_state_needs_one_adam_state():
    params = init("linear", jax.random.key(0), jnp.float32)
    flat = fused.to_state("linear", params)
    with pytest.raises(ValueError, match="expected one Adam state .* found 0"):
        fused.to_opt_state("linear", flat, optax.sgd(0.1).init(params))
