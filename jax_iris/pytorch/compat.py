"""A torch ``state_dict`` to jax_iris params and back, without importing torch.

The names map mechanically because the Flax modules mirror the blog's attributes::

    torch  layer_1.k.weight  [out, in]   <->   Flax  layer_1/k/kernel  [in, out]
    torch  layer_1.k.bias    [out]       <->   Flax  layer_1/k/bias    [out]

torch ``nn.Linear`` computes ``x @ weight.T + bias``; the Flax layer computes
``x @ kernel + bias``, so the kernel is the weight transposed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jax_iris import registry
from jax_iris.models import Params, flatten_params, param_shapes, unflatten_params
from jax_iris.quote import quote

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_WIDENED_TORCH_DTYPES = ("torch.bfloat16", "torch.float16")  # exact in float32
_TORCH_LEAF = {"kernel": "weight", "bias": "bias"}


def _torch_name(flax_name: str) -> str:
    *module, leaf = flax_name.split("/")
    return ".".join([*module, _TORCH_LEAF[leaf]])


def torch_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """``{"layer_1.k.weight": (10, 4), ...}`` in torch's order (each module's weight, then bias)."""
    registry.arch_spec(arch)
    shapes = param_shapes(arch)
    modules = dict.fromkeys(name.rsplit("/", 1)[0] for name in shapes)
    ordered = {}
    for module in modules:
        in_dim, out_dim = shapes[f"{module}/kernel"]
        ordered[_torch_name(f"{module}/kernel")] = (out_dim, in_dim)
        ordered[_torch_name(f"{module}/bias")] = (out_dim,)
    return ordered


def infer_arch(keys: Any) -> str | None:
    """The arch whose ``state_dict`` has exactly these keys, or None."""
    keys = set(keys)
    matches = [arch for arch in registry.ARCHS if set(torch_shapes(arch)) == keys]
    return matches[0] if matches else None


def _to_numpy(value: Any) -> np.ndarray:
    """A tensor or array as numpy, converted only where that is exact.

    A sparse tensor becomes dense, and bfloat16 or float16 becomes float32: float32
    holds every value of both. A quantized or meta tensor raises ValueError: the first
    holds integers and a scale (dequantizing is a choice for the user), the second no
    values at all.
    """
    if hasattr(value, "detach"):  # a torch tensor, recognised without importing torch
        if getattr(value, "is_meta", False):
            raise ValueError("is a meta tensor, which holds no values")
        if getattr(value, "is_quantized", False):
            raise ValueError(
                f"is a quantized tensor ({str(value.dtype).removeprefix('torch.')}); "
                "dequantize it first (tensor.dequantize()) if float weights are what you want"
            )
        value = value.detach().cpu()
        if str(value.layout) != "torch.strided":
            value = value.to_dense()
        if str(value.dtype) in _WIDENED_TORCH_DTYPES:
            value = value.float()
        try:
            value = value.numpy()
        except (TypeError, RuntimeError):
            dtype = str(value.dtype).removeprefix("torch.")
            raise ValueError(f"has dtype {dtype}, expected float32 or float64") from None
    array = np.asarray(value)
    return array.astype(np.float32) if array.dtype == np.float16 else array


def params_from_state_dict(arch: str, state_dict: Mapping[str, Any]) -> Params:
    """A torch ``state_dict`` (tensors or numpy arrays) as ``{"params": {...}}`` numpy arrays.

    Strict, like ``load_state_dict(strict=True)``: float values only. float32 and
    float64 are kept; bfloat16 and float16 become float32 and sparse tensors dense,
    both exactly.

    Raises:
        ValueError: naming every missing key, unexpected key, wrong shape or dtype,
            non-string key, and quantized or meta tensor.
    """
    expected = torch_shapes(arch)
    arrays: dict[str, np.ndarray] = {}
    problems = [f"missing {name}" for name in expected if name not in state_dict]
    for name, value in state_dict.items():
        if not isinstance(name, str):
            problems.append(f"key {quote(name, 40)} ({type(name).__name__}) is not a string")
        elif name in expected:
            try:
                arrays[name] = _to_numpy(value)
            except ValueError as err:
                problems.append(f"{name} {err}")
        else:
            problems.append(f"unexpected {name}")
    for name, shape in expected.items():
        value = arrays.get(name)
        if value is None:
            continue
        if value.shape != shape:
            problems.append(f"{name} has shape {tuple(value.shape)}, expected {shape}")
        elif value.dtype not in _FLOAT_DTYPES:
            problems.append(f"{name} has dtype {value.dtype}, expected float32 or float64")
    if problems:
        raise ValueError(f"state_dict does not fit the {arch} net: {'; '.join(problems)}")

    flat = {}
    for flax_name in param_shapes(arch):
        value = arrays[_torch_name(flax_name)]
        flat[flax_name] = np.ascontiguousarray(value.T if flax_name.endswith("/kernel") else value)
    return unflatten_params(flat)


def state_dict_from_params(arch: str, params: Params) -> dict[str, np.ndarray]:
    """jax_iris params as a torch-style ``state_dict`` of numpy arrays, in torch's key order.

    Load it with ``{k: torch.from_numpy(v) ...}`` and ``load_state_dict(strict=True)``.

    Raises:
        ValueError: naming every missing or unexpected leaf and wrong shape.
    """
    expected = param_shapes(arch)
    flat = flatten_params(params)
    problems = [f"missing {name}" for name in expected if name not in flat]
    problems += [f"unexpected {name}" for name in flat if name not in expected]
    problems += [
        f"{name} has shape {flat[name].shape}, expected {shape}"
        for name, shape in expected.items()
        if name in flat and flat[name].shape != shape
    ]
    if problems:
        raise ValueError(f"params do not fit the {arch} net: {'; '.join(problems)}")

    state_dict = {}
    for torch_name in torch_shapes(arch):
        module, leaf = torch_name.rsplit(".", 1)
        flax_leaf = "kernel" if leaf == "weight" else "bias"
        value = flat[f"{module.replace('.', '/')}/{flax_leaf}"]
        state_dict[torch_name] = np.ascontiguousarray(value.T if leaf == "weight" else value)
    return state_dict
