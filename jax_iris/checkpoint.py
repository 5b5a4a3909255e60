"""Checkpoints: one pickle of plain numpy arrays, written atomically, read safely.

The file holds a dict::

    {"format": "jax_iris.checkpoint", "version": 1, "arch": "atten",
     "config": {...TrainConfig fields...}, "metrics": {...} or None,
     "history": {"loss": float32 [epochs], "accuracy": float32 [epochs]} or None,
     "params": {"layer_1/k/kernel": ndarray [4, 10], ...}}

Loading never runs code from the file: the unpickler admits numpy arrays and
dtypes and the builtin containers and scalars, nothing else, and then checks
every name, shape and dtype against the arch.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jax_iris.fileio import atomic_write_bytes
from jax_iris.models import ARCHS, Params, param_shapes
from jax_iris.train import TrainConfig

FORMAT = "jax_iris.checkpoint"
VERSION = 1
_PICKLE_PROTOCOL = 4  # arrays pickle in-band, through numpy's _reconstruct
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# The only globals a checkpoint may name. numpy 2 writes numpy._core, numpy 1 numpy.core.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
}


class CheckpointError(Exception):
    """A checkpoint could not be written or read; the message names the file and the problem."""


class Checkpoint(NamedTuple):
    arch: str
    params: Params  # {"params": {...}} of numpy arrays, ready for model.apply
    config: TrainConfig
    metrics: dict[str, Any] | None
    history: dict[str, np.ndarray] | None


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise _ForbiddenGlobal(
            f"it asks for {module}.{name}, which a jax_iris checkpoint never contains"
        )


def flatten_params(params: Params) -> dict[str, np.ndarray]:
    """``{"params": {"layer_1": {"k": {"kernel": a}}}}`` -> ``{"layer_1/k/kernel": a}``."""
    tree = params.get("params", params) if isinstance(params, dict) else params
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in path): np.asarray(leaf) for path, leaf in flat}


def unflatten_params(flat: dict[str, np.ndarray]) -> Params:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return {"params": tree}


def save(
    path: str | os.PathLike,
    params: Params,
    *,
    config: TrainConfig,
    metrics: dict[str, Any] | None = None,
    history: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a checkpoint atomically: a temporary file beside ``path``, then ``os.replace``.

    A failure at any point leaves ``path`` as it was (absent or the previous file).
    """
    path = Path(path)
    flat = flatten_params(params)
    _check_params(path, config.arch, flat)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": config.arch,
        "config": config.to_dict(),
        "metrics": metrics,
        "history": None if history is None else {k: np.asarray(v) for k, v in history.items()},
        "params": flat,
    }
    data = pickle.dumps(payload, protocol=_PICKLE_PROTOCOL)
    try:
        return atomic_write_bytes(path, data)
    except OSError as err:
        raise CheckpointError(f"cannot write {path}: {err.strerror or err}") from None


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint. Raises ``CheckpointError`` naming the file and problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        payload = _SafeUnpickler(io.BytesIO(data)).load()
    except _ForbiddenGlobal as err:
        raise CheckpointError(f"{path}: refused, not a jax_iris checkpoint: {err}") from None
    except Exception as err:  # a malformed stream can raise almost anything; none of it is ours
        raise CheckpointError(
            f"{path}: truncated, corrupt or not a pickle ({type(err).__name__}: {_one_line(err)})"
        ) from None
    return _validate(path, payload)


def _validate(path: Path, payload: Any) -> Checkpoint:
    def fail(problem: str) -> CheckpointError:
        return CheckpointError(f"{path}: {problem}")

    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise fail("not a jax_iris checkpoint (no jax_iris format tag)")
    if payload.get("version") != VERSION:
        raise fail(f"format version {payload.get('version')!r}; this jax_iris reads {VERSION}")
    arch = payload.get("arch")
    if arch not in ARCHS:
        raise fail(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    config_values = payload.get("config")
    if not isinstance(config_values, dict):
        raise fail("the config is missing")
    try:
        config = TrainConfig.from_dict(config_values)
    except (TypeError, ValueError) as err:
        raise fail(f"invalid config: {err}") from None
    if config.arch != arch:
        raise fail(f"config says arch {config.arch!r} but the params are for {arch!r}")
    flat = payload.get("params")
    if not isinstance(flat, dict):
        raise fail("the params are missing")
    _check_params(path, arch, flat)
    metrics = payload.get("metrics")
    if metrics is not None and not isinstance(metrics, dict):
        raise fail("the metrics are not a dict")
    history = payload.get("history")
    if history is not None and not (
        isinstance(history, dict)
        and all(
            isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype in _FLOAT_DTYPES
            for v in history.values()
        )
    ):
        raise fail("the history is not a dict of 1-D float arrays")
    return Checkpoint(arch, unflatten_params(flat), config, metrics, history)


def _check_params(path: Path, arch: str, flat: dict[str, Any]) -> None:
    expected = param_shapes(arch)
    missing = [name for name in expected if name not in flat]
    unexpected = [name for name in flat if name not in expected]
    others = [other for other in ARCHS if other != arch and set(flat) == set(param_shapes(other))]
    if others:
        raise CheckpointError(f"{path}: the params are those of the {others[0]} net, not {arch}")
    problems = []
    if missing:
        problems.append(f"missing {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    for name, shape in expected.items():
        value = flat.get(name)
        if value is None:
            continue
        if not isinstance(value, np.ndarray) or value.dtype not in _FLOAT_DTYPES:
            problems.append(f"{name} is not a float32/float64 array")
        elif value.shape != shape:
            problems.append(f"{name} has shape {value.shape}, the {arch} net needs {shape}")
    if problems:
        raise CheckpointError(f"{path}: params do not fit the {arch} net: {'; '.join(problems)}")


def _some(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(map(str, names[:shown])) + more


def _one_line(err: Exception) -> str:
    """Some pickle errors span lines; the user gets one."""
    return " ".join(str(err).split())
