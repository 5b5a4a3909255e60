"""The blog's two networks as Flax modules, initialised the way PyTorch does.

Parameter names mirror the blog's attribute names, so a torch ``state_dict``
maps onto them mechanically (see ``jax_iris.pytorch.compat``):

- ``AttentionNet``: ``layer_1/{k,q,v}``, ``layer_2/{k,q,v}``, ``linear``
- ``LinearNet``: ``layer_1``, ``layer_2``, ``layer_3``

Each dense layer holds ``kernel`` [in, out] (torch's ``weight`` transposed) and
``bias`` [out]. ``param_shapes`` names every leaf by its path (``layer_1/k/kernel``);
``flatten_params`` and ``unflatten_params`` turn a params tree into that flat dict and back.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from jax_iris import platform as _platform

# Before any JAX backend starts: the XLA flags every net here is trained under, set once
# for commands and Python users alike (jax_iris.platform.CPU_XLA_FLAGS; a flag the user
# set in XLA_FLAGS stays as set). Every module that computes imports this one.
_platform.use_default_xla_flags()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jax_iris import registry  # noqa: E402
from jax_iris.data import NUM_CLASSES, NUM_FEATURES  # noqa: E402

Params = Any  # a nested dict of arrays: {"params": {"layer_1": {...}, ...}}


def torch_linear_init(fan_in: int) -> Callable[..., jax.Array]:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch ``nn.Linear``'s init for weight and bias.

    torch draws the weight with kaiming_uniform(a=sqrt(5)), which works out to this
    same bound, and the bias from it explicitly. Flax's ``Dense`` differs on both
    counts (lecun-normal kernel, zero bias), hence this layer.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def _dense_rows_last(x_t: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """``(x @ kernel + bias).T`` as ``kernel.T @ x_t``: [..., in, rows] -> [..., out, rows]."""
    return jnp.einsum("io,...ir->...or", kernel, x_t) + bias[:, None]


def _rows_first(rows_last: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """A rows-last computation on x [..., rows, features], answered as [..., rows, out]."""
    return jnp.swapaxes(rows_last(jnp.swapaxes(x, -1, -2)), -1, -2)


class TorchDense(nn.Module):
    """``y = x @ kernel + bias``, initialised like torch ``nn.Linear(in, features)``.

    ``rows_last`` computes the same on the transposed layout, x_t [..., in, rows].
    """

    features: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def weights(self, fan_in: int) -> tuple[jax.Array, jax.Array]:
        """``kernel`` [fan_in, features] and ``bias`` [features], created on first use.

        A Flax initialiser is not told fan_in, so the bound comes from the input,
        for the bias as well as the kernel (torch draws both from it).
        """
        init = torch_linear_init(fan_in)
        kernel = self.param("kernel", init, (fan_in, self.features), self.param_dtype)
        bias = self.param("bias", init, (self.features,), self.param_dtype)
        return kernel, bias

    def rows_last(self, x_t: jax.Array) -> jax.Array:
        return _dense_rows_last(x_t, *self.weights(x_t.shape[-2]))

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self.weights(x.shape[-1])
        return x @ kernel + jnp.reshape(bias, (1,) * (x.ndim - 1) + bias.shape)


class ElementwiseAttention(nn.Module):
    """The blog's "attention": a learned gate on each feature, not dot-product attention.

    ``relu(softmax(k * q / sqrt(features), axis=features) * v)`` with ``k``, ``q``,
    ``v`` three dense projections of the input. They keep their own parameters
    (``k/kernel``, ``q/bias``, ...) but are computed as one matmul against the three
    kernels side by side ([in, 3 * features]).
    """

    features: int

    def setup(self) -> None:
        self.k = TorchDense(self.features)
        self.q = TorchDense(self.features)
        self.v = TorchDense(self.features)

    def rows_last(self, x_t: jax.Array) -> jax.Array:
        """x_t [..., in, rows] -> [..., features, rows]; the softmax runs over axis -2."""
        fan_in = x_t.shape[-2]
        kernels, biases = zip(*(m.weights(fan_in) for m in (self.k, self.q, self.v)))
        kqv = _dense_rows_last(x_t, jnp.concatenate(kernels, axis=1), jnp.concatenate(biases))
        k, q, v = jnp.split(kqv, 3, axis=-2)
        # The blog divides by torch.sqrt(torch.tensor(features)): a float32 scalar.
        scale = jnp.sqrt(jnp.asarray(self.features, dtype=jnp.float32)).astype(kqv.dtype)
        gate = jax.nn.softmax(k * q / scale, axis=-2)
        return jax.nn.relu(gate * v)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _rows_first(self.rows_last, x)


def identity(z: jax.Array) -> jax.Array:
    """The ``logits`` head: the last layer goes to the cross-entropy unsquashed."""
    return z


def apply_head(head: str, z: jax.Array) -> jax.Array:
    """The head's function (``jax_iris.registry.HEADS``); the blog's is ``sigmoid``."""
    return registry.resolve(registry.head_spec(head).function)(z)


class AttentionNet(nn.Module):
    """Attention 4 -> 10, attention 10 -> 20, dense 20 -> 3, sigmoid.

    Computed rows-last (the 120 rows on the minor axis, where XLA:CPU vectorises
    the elementwise work and the feature softmax); ``__call__`` takes and returns
    the usual [rows, features].
    """

    head: str = "sigmoid"

    def setup(self) -> None:
        self.layer_1 = ElementwiseAttention(10)
        self.layer_2 = ElementwiseAttention(20)
        self.linear = TorchDense(NUM_CLASSES)

    def rows_last(self, x_t: jax.Array) -> jax.Array:
        """x_t [..., 4, rows] -> outputs [..., 3, rows]."""
        h = self.layer_2.rows_last(self.layer_1.rows_last(x_t))
        return apply_head(self.head, self.linear.rows_last(h))

    def __call__(self, x: jax.Array) -> jax.Array:
        return _rows_first(self.rows_last, x)


class LinearNet(nn.Module):
    """Dense 4 -> 10, ReLU, dense 10 -> 20, ReLU, dense 20 -> 3, sigmoid.

    Rows first, as torch computes it: its three matmuls dominate, and this order
    keeps the linear net's results bit for bit what they were, and within the
    parity tolerances of torch on its two-class plateau.
    """

    head: str = "sigmoid"

    def setup(self) -> None:
        self.layer_1 = TorchDense(10)
        self.layer_2 = TorchDense(20)
        self.layer_3 = TorchDense(NUM_CLASSES)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.layer_1(x))
        h = jax.nn.relu(self.layer_2(h))
        return apply_head(self.head, self.layer_3(h))


def get_model(arch: str, head: str = "sigmoid") -> nn.Module:
    """The Flax module registered as ``arch`` (``jax_iris.registry.ARCHS``), with ``head``."""
    registry.head_spec(head)
    return registry.resolve(registry.arch_spec(arch).module)(head=head)


def init_params(arch: str, key: jax.Array, dtype: Any = jnp.float32) -> Params:
    """Fresh torch-style initial parameters for ``arch`` (the head has no parameters).

    Drawn in float32, as torch does, then cast to ``dtype``.
    """
    dummy = jnp.zeros((1, NUM_FEATURES), jnp.float32)
    params = get_model(arch).init(key, dummy)
    if jnp.dtype(dtype) == jnp.float32:
        return params
    return jax.tree_util.tree_map(lambda p: p.astype(dtype), params)


def param_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """``{"layer_1/k/kernel": (4, 10), ...}``: every leaf's path and shape for ``arch``."""
    return _param_shapes(registry.arch_spec(arch))


@functools.cache
def _param_shapes(spec: registry.ArchSpec) -> dict[str, tuple[int, ...]]:
    # Cached on the registry entry, not the name: a name registered again gets its own.
    # The key is made inside the traced function: nothing is compiled or run.
    shapes = jax.eval_shape(lambda: init_params(spec.name, jax.random.key(0)))
    return {name: leaf.shape for name, leaf in _leaves_by_name(shapes).items()}


def flatten_params(params: Params) -> dict[str, np.ndarray]:
    """``{"params": {"layer_1": {"k": {"kernel": a}}}}`` -> ``{"layer_1/k/kernel": a}``."""
    return {name: np.asarray(leaf) for name, leaf in _leaves_by_name(params).items()}


def unflatten_params(flat: dict[str, np.ndarray]) -> Params:
    """``{"layer_1/k/kernel": a}`` -> ``{"params": {"layer_1": {"k": {"kernel": a}}}}``."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return {"params": tree}


def _leaves_by_name(params: Params) -> dict[str, Any]:
    tree = params.get("params", params) if isinstance(params, dict) else params
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in flat}
