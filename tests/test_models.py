"""The blog's nets in Flax: parameter names and shapes, torch's init, the maths of a layer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_iris.models import (
    AttentionNet,
    ElementwiseAttention,
    TorchDense,
    flatten_params,
    get_model,
    init_params,
    param_shapes,
    unflatten_params,
)
from jax_iris.registry import blog_archs

# One compiled program per arch (the one fit uses too) rather than Flax's eager init,
# which compiles a random draw per parameter shape.
init = jax.jit(init_params, static_argnums=0)

EXPECTED_SHAPES = {
    "atten": {
        **{f"layer_1/{p}/kernel": (4, 10) for p in "kqv"},
        **{f"layer_1/{p}/bias": (10,) for p in "kqv"},
        **{f"layer_2/{p}/kernel": (10, 20) for p in "kqv"},
        **{f"layer_2/{p}/bias": (20,) for p in "kqv"},
        "linear/kernel": (20, 3),
        "linear/bias": (3,),
    },
    "linear": {
        "layer_1/kernel": (4, 10),
        "layer_1/bias": (10,),
        "layer_2/kernel": (10, 20),
        "layer_2/bias": (20,),
        "layer_3/kernel": (20, 3),
        "layer_3/bias": (3,),
    },
}


@pytest.mark.parametrize("arch", blog_archs())
def test_parameter_names_and_shapes(arch):
    assert param_shapes(arch) == EXPECTED_SHAPES[arch]


@pytest.mark.parametrize("arch", blog_archs())
def test_flatten_names_leaves_by_path_and_unflatten_restores_the_tree(arch):
    params = init(arch, jax.random.key(0))
    flat = flatten_params(params)
    assert {k: v.shape for k, v in flat.items()} == EXPECTED_SHAPES[arch]
    assert all(type(v) is np.ndarray for v in flat.values())
    back = unflatten_params(flat)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
        assert np.asarray(a).tobytes() == b.tobytes()
    assert flatten_params(params["params"]).keys() == flat.keys()  # the inner tree alone too


@pytest.mark.parametrize("arch", blog_archs())
def test_output_shape_and_range(arch):
    params = init(arch, jax.random.key(1))
    out = jax.jit(get_model(arch).apply)(params, jnp.ones((7, 4)))
    assert out.shape == (7, 3)
    assert bool(((out > 0) & (out < 1)).all())  # the sigmoid head
    logits = jax.jit(get_model(arch, head="logits").apply)(params, jnp.ones((7, 4)))
    np.testing.assert_allclose(jax.nn.sigmoid(logits), out, rtol=1e-6)


def test_init_fills_torch_bounds():
    """Weight and bias both ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as torch nn.Linear."""
    draws = [init("atten", jax.random.key(seed)) for seed in range(40)]
    stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *draws)
    flat = jax.tree_util.tree_flatten_with_path(stacked["params"])[0]
    for path, leaf in flat:
        name = "/".join(k.key for k in path)
        values = leaf.ravel()
        fan_in = param_shapes("atten")[name.rsplit("/", 1)[0] + "/kernel"][0]
        bound = 1 / math.sqrt(fan_in)
        assert values.min() >= -bound and values.max() <= bound, name
        # 40 draws of >= 3 values: the extremes come within 20% of the bound, the mean near 0.
        assert values.min() < -0.8 * bound and values.max() > 0.8 * bound, name
        assert abs(values.mean()) < 0.2 * bound, name
        assert values.std() > 0.45 * bound, name  # U(-b, b) has std b/sqrt(3) ~ 0.577 b


def test_elementwise_attention_maths():
    x = jax.random.normal(jax.random.key(2), (5, 4))
    layer = ElementwiseAttention(6)
    params = jax.jit(layer.init)(jax.random.key(3), x)
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    k, q, v = (np.asarray(x) @ p[n]["kernel"] + p[n]["bias"] for n in "kqv")
    scores = k * q / math.sqrt(6)
    gate = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    expected = np.maximum(gate * v, 0)
    np.testing.assert_allclose(jax.jit(layer.apply)(params, x), expected, rtol=1e-5, atol=1e-6)


def test_attention_net_composition():
    params = init("atten", jax.random.key(4))
    x = jax.random.normal(jax.random.key(5), (3, 4))

    def attend(h, layer):
        k, q, v = (h @ layer[n]["kernel"] + layer[n]["bias"][None, :] for n in "kqv")
        return jax.nn.relu(jax.nn.softmax(k * q / math.sqrt(k.shape[1]), axis=1) * v)

    def by_hand(p, x):
        h = attend(attend(x, p["layer_1"]), p["layer_2"])
        return jax.nn.sigmoid(h @ p["linear"]["kernel"] + p["linear"]["bias"][None, :])

    # Each side in one compiled program, as training runs it (eagerly, each op compiles
    # on its own).
    expected = jax.jit(by_hand)(params["params"], x)
    np.testing.assert_allclose(jax.jit(AttentionNet().apply)(params, x), expected, rtol=1e-6)


def test_torch_dense_broadcasts_its_bias_over_any_leading_axes():
    """Explicitly: the suite runs with rank promotion raising, so an implicit broadcast fails."""
    x = jax.random.normal(jax.random.key(6), (2, 5, 4))
    layer = TorchDense(3)
    params = layer.init(jax.random.key(7), x)
    p = params["params"]
    expected = np.einsum("abi,io->abo", np.asarray(x), p["kernel"]) + np.asarray(p["bias"])
    np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-6, atol=1e-6)


def test_float64_params_stay_float64():
    with jax.enable_x64(True):
        params = jax.jit(init_params, static_argnums=(0, 2))(
            "linear", jax.random.key(0), jnp.float64
        )
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float64)}
    # Drawn in float32 first, as torch does: the float64 values are the float32 ones.
    float32 = init("linear", jax.random.key(0))
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(float32)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(np.float64))


def test_unknown_arch_and_head():
    with pytest.raises(ValueError, match="unknown arch 'mlp'"):
        get_model("mlp")
    with pytest.raises(ValueError, match="unknown head 'softmax'"):
        get_model("atten", head="softmax")
