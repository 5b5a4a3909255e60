import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_iris.models import (
    ARCHS,
    AttentionNet,
    ElementwiseAttention,
    get_model,
    init_params,
    param_shapes,
)

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


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_names_and_shapes(arch):
    assert param_shapes(arch) == EXPECTED_SHAPES[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shape_and_range(arch):
    params = init_params(arch, jax.random.key(1))
    out = get_model(arch).apply(params, jnp.ones((7, 4)))
    assert out.shape == (7, 3)
    assert bool(((out > 0) & (out < 1)).all())  # the sigmoid head
    logits = get_model(arch, head="logits").apply(params, jnp.ones((7, 4)))
    np.testing.assert_allclose(jax.nn.sigmoid(logits), out, rtol=1e-6)


def test_init_fills_torch_bounds():
    """Weight and bias both ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as torch nn.Linear."""
    keys = jax.random.split(jax.random.key(0), 40)
    batched = jax.jit(jax.vmap(lambda key: init_params("atten", key)))(keys)
    flat = jax.tree_util.tree_flatten_with_path(batched["params"])[0]
    for path, leaf in flat:
        name = "/".join(k.key for k in path)
        values = np.asarray(leaf).ravel()
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
    params = layer.init(jax.random.key(3), x)
    p = params["params"]
    k, q, v = (x @ p[n]["kernel"] + p[n]["bias"] for n in "kqv")
    scores = np.asarray(k * q) / math.sqrt(6)
    gate = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    expected = np.maximum(gate * np.asarray(v), 0)
    np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-5, atol=1e-6)


def test_attention_net_composition():
    params = init_params("atten", jax.random.key(4))
    x = jax.random.normal(jax.random.key(5), (3, 4))
    p = params["params"]

    def attend(h, layer):
        k, q, v = (h @ layer[n]["kernel"] + layer[n]["bias"] for n in "kqv")
        return jax.nn.relu(jax.nn.softmax(k * q / math.sqrt(k.shape[1]), axis=1) * v)

    h = attend(attend(x, p["layer_1"]), p["layer_2"])
    expected = jax.nn.sigmoid(h @ p["linear"]["kernel"] + p["linear"]["bias"])
    np.testing.assert_allclose(AttentionNet().apply(params, x), expected, rtol=1e-6)


def test_unknown_arch_and_head():
    with pytest.raises(ValueError, match="unknown arch 'mlp'"):
        get_model("mlp")
    with pytest.raises(ValueError, match="unknown head 'softmax'"):
        get_model("atten", head="softmax")
