"""Classify flowers with a trained net: species, class index and class probabilities per row.

The probabilities are ``softmax(outputs)``, the distribution the training loss
(``CrossEntropyLoss``) scores. With the blog's ``sigmoid`` head the outputs are
sigmoids in (0, 1), so the softmax over them never exceeds e / (e + 2) ~= 0.576 for
a class: read them as a ranking, not as calibrated confidences.

Rows go through the net in blocks of ``ROWS_PER_CALL`` (the last block padded with
zeros; each row is computed independently of the others), so one program per
(arch, head, dtype) serves any number of rows.

This module reads no files: a checkpoint is loaded where files are read,
``predict(jax_iris.io.checkpoint.load(path), rows)``.
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from jax_iris import registry
from jax_iris.data import NUM_CLASSES, NUM_FEATURES
from jax_iris.models import Params, flatten_params, get_model, param_shapes
from jax_iris.rows import SPECIES

ROWS_PER_CALL = 1024


class Predictions(NamedTuple):
    species: tuple[str, ...]  # [rows], SPECIES[classes[i]]
    classes: np.ndarray  # int32 [rows], argmax of the outputs
    probabilities: np.ndarray  # [rows, 3], softmax of the outputs, in the params' dtype


class Net(NamedTuple):
    """What ``predict`` needs of a net: its arch, the head it was trained with, its params."""

    arch: str
    head: str
    params: Params


def as_net(net: Any, arch: str | None = None, head: str = "sigmoid") -> Net:
    """A ``Net`` from a ``Net``, a loaded checkpoint, or bare params.

    A loaded checkpoint is anything with ``arch``, ``params`` and ``config.head``, as
    ``jax_iris.io.checkpoint.load(path)`` returns. Bare params (``{"params": {...}}``)
    need the ``head`` they were trained with; the arch is read from the parameter shapes
    unless given.

    Raises:
        TypeError: a file name (load the checkpoint first).
        ValueError: bare params that match no registered arch.
    """
    if isinstance(net, Net):
        return net
    if isinstance(net, (str, os.PathLike)):
        raise TypeError(
            "predict takes a net, not a file name: load the checkpoint first,"
            " predict(jax_iris.io.checkpoint.load(path), rows)"
        )
    if all(hasattr(net, name) for name in ("arch", "params", "config")):
        return Net(net.arch, net.config.head, net.params)
    params = net
    if arch is None:
        shapes = {k: v.shape for k, v in flatten_params(params).items()}
        matches = [name for name in registry.ARCHS if param_shapes(name) == shapes]
        if len(matches) != 1:
            found = "no registered arch" if not matches else f"archs {', '.join(matches)}"
            raise ValueError(f"the params' shapes match {found}; pass arch=")
        arch = matches[0]
    registry.head_spec(head)
    return Net(arch, head, params)


def predict(net: Any, rows: Any, *, arch: str | None = None, head: str = "sigmoid") -> Predictions:
    """Species, class and class probabilities for each of ``rows`` [n, 4] (cm, iris order).

    ``net`` is a ``Net``, a loaded checkpoint (``jax_iris.io.checkpoint.load(path)``) or
    bare params (then ``arch`` is inferred from their shapes and ``head`` says how they
    were trained): see ``as_net``. Probabilities are ``softmax(outputs)``: see the module
    docstring for what that means with the sigmoid head.

    Raises:
        TypeError: a file name instead of a net.
        ValueError: rows not of shape [n, 4].
        FloatingPointError: the net gives a non-finite output (a diverged net).
    """
    net = as_net(net, arch, head)
    params = jax.tree_util.tree_map(jnp.asarray, net.params)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    x = np.asarray(rows, dtype)
    if x.ndim != 2 or x.shape[1] != NUM_FEATURES:
        raise ValueError(f"rows must be [n, {NUM_FEATURES}], got shape {x.shape}")
    spec = registry.arch_spec(net.arch)
    outputs, probabilities = [], []
    for start in range(0, len(x), ROWS_PER_CALL):
        block = x[start : start + ROWS_PER_CALL]
        padded = np.zeros((ROWS_PER_CALL, NUM_FEATURES), dtype)
        padded[: len(block)] = block
        out, prob = jax.device_get(_outputs_jit(spec, net.head, params, padded))
        outputs.append(out[: len(block)])
        probabilities.append(prob[: len(block)])
    outputs = np.concatenate(outputs or [np.zeros((0, NUM_CLASSES), dtype)])
    probabilities = np.concatenate(probabilities or [outputs])
    bad = np.flatnonzero(~np.isfinite(outputs).all(axis=1))
    if bad.size:
        raise FloatingPointError(
            f"the net's output for row {bad[0] + 1} is not finite (a diverged net?)"
        )
    classes = outputs.argmax(axis=1).astype(np.int32)
    return Predictions(tuple(SPECIES[c] for c in classes), classes, probabilities)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _outputs_jit(
    spec: registry.ArchSpec, head: str, params: Params, x: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Outputs and their softmax, [ROWS_PER_CALL, 3] each; cached on the registry entry."""
    # flax types ``apply`` as outputs or (outputs, state); without ``mutable``, the outputs.
    outputs = cast(jax.Array, get_model(spec.name, head).apply(params, x))
    return outputs, jax.nn.softmax(outputs, axis=-1)
