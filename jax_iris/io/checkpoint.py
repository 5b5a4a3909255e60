"""Checkpoints (format version 2): one pickle of builtins only, written atomically, read safely.

A pickle (protocol 4) of a dict: ``format``, ``version`` (2), ``arch``, ``config`` (the
TrainConfig fields), ``metrics`` (nested dicts of floats, or None), ``history`` (loss and
accuracy, 1-D ARRAYs, or None) and ``params`` (``"layer_1/k/kernel"``: ARRAY, ...), each ARRAY
``{"dtype": "<f4" or "<f8", "shape": [4, 10], "data": bytes}`` (C order); key by key in
checkpoints/README.md. ``load`` reads at most ``MAX_CHECKPOINT_BYTES`` of a regular file,
unpickles it with ``safe_pickle`` and takes the arrays' names and shapes from the arch
(``models.param_shapes``), as equinox takes them from a ``like`` tree. Every problem raises
``CheckpointError``: one line that names the file, what it quotes escaped and cut short.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import stat
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jax_iris import models, registry
from jax_iris.config import TrainConfig
from jax_iris.io import safe_pickle
from jax_iris.io.fileio import atomic_write_bytes
from jax_iris.io.safe_pickle import Refused
from jax_iris.quote import clean, clean_path, quote

FORMAT = "jax_iris.checkpoint"
VERSION = 2
# A history holds 2 values per epoch: at the 10,000,000 epochs a TrainConfig allows,
# 80 MB in float32 (float64: up to about 6 million epochs). The params are ~7 KB.
# Loading holds the file and the unpickled payload at once: about twice this at peak.
MAX_CHECKPOINT_BYTES = 96 * 2**20
_MAX_METRICS_DEPTH = 4
_KEYS = ("format", "version", "arch", "config", "metrics", "history", "params")
_RANGES = {"history/loss": (0, np.inf), "history/accuracy": (0, 1)}
_WHAT = "a jax_iris checkpoint"  # in "refused: it uses opcode X, which ... never contains"
_V1 = (  # a version 1 file pickled numpy arrays: its imports are numpy's, followed to the end
    "format version 1, no longer read: retrain (python scripts/train.py --arch ARCH) or convert"
    " a .pth (python scripts/convert.py model.pth ARCH.pkl) to get a version 2 file"
)
_FILE_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe (FIFO)"}
_FILE_KINDS |= {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
_FILE_KINDS |= {stat.S_IFSOCK: "a socket"}


class CheckpointError(Exception):
    """A checkpoint could not be written or read; the message names the file and the problem."""


class Checkpoint(NamedTuple):
    arch: str
    params: models.Params  # {"params": {...}} of numpy arrays, ready for model.apply
    config: TrainConfig
    metrics: dict[str, Any] | None
    history: dict[str, np.ndarray] | None  # {"loss": [epochs], "accuracy": [epochs]}


def _over_cap() -> str:
    return f"more than the {MAX_CHECKPOINT_BYTES:,} bytes a checkpoint may hold"


def encode(
    params: models.Params,
    *,
    config: TrainConfig,
    metrics: dict[str, Any] | None = None,
    history: dict[str, np.ndarray] | None = None,
    path: str | os.PathLike = "checkpoint",
) -> bytes:
    """A checkpoint's bytes, checked as ``load`` checks them (``path`` names it in errors)."""
    payload = {"format": FORMAT, "version": VERSION, "arch": config.arch}
    payload["config"] = {k: _plain(v) for k, v in config.to_dict().items()}
    payload["metrics"] = None if metrics is None else _plain(metrics)
    payload["history"] = None if history is None else _arrays(_plain(history))
    payload["params"] = _arrays(models.flatten_params(params))
    try:
        _check(payload)
        data = pickle.dumps(payload, protocol=4)
        if len(data) > MAX_CHECKPOINT_BYTES:
            raise Refused(
                f"it would be {len(data):,} bytes, {_over_cap()} (is the history that long?)"
            )
        safe_pickle.check(data)  # what load checks first: only a bug could fail it
    except Refused as err:
        raise CheckpointError(f"cannot write {clean_path(path)}: {err}") from None
    return data


def save(
    path: str | os.PathLike,
    params: models.Params,
    *,
    config: TrainConfig,
    metrics: dict[str, Any] | None = None,
    history: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``encode``'s bytes atomically: a temporary file beside ``path``, then
    ``os.replace``; a failure leaves ``path`` as it was (absent or the previous file)."""
    data = encode(params, config=config, metrics=metrics, history=history, path=path)
    try:
        return atomic_write_bytes(path, data)
    except OSError as err:
        raise CheckpointError(f"cannot write {clean_path(path)}: {err.strerror or err}") from None


def _arrays(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """ARRAYs, floats made little-endian (the check refuses another dtype)."""
    out = {}
    for name, value in values.items():
        array = np.asarray(value)
        if array.dtype.kind == "f":
            array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        out[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}
    return out


def _plain(value: Any, depth: int = 0) -> Any:
    """Dicts (NamedTuples too) at most _MAX_METRICS_DEPTH deep, numpy and jax scalars as
    Python's, the numbers inside a dict as floats; the rest is left for the check to refuse."""
    value = value._asdict() if hasattr(value, "_asdict") else value
    if isinstance(value, dict) and depth < _MAX_METRICS_DEPTH:
        return {k: _plain(v, depth + 1) for k, v in value.items()}
    value = np.asarray(value).item() if getattr(value, "ndim", None) == 0 else value
    return float(value) if depth and type(value) in (int, float) else value


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and check a checkpoint: whatever the file, this reads at most
    ``MAX_CHECKPOINT_BYTES``, runs nothing from it and holds about twice its size at peak."""
    try:
        data = _read(Path(path))
        try:
            payload = safe_pickle.loads(data, what=_WHAT, legacy=frozenset({"numpy"}))
        except safe_pickle.LegacyRefused as err:  # numpy's names: version 1, or an attack
            raise (Refused(_V1) if FORMAT.encode() in data else err) from None
        del data  # not held while the arrays are rebuilt, each record freed once copied
        config, flat, history = _check(payload), payload["params"], payload["history"]
        params = {name: _rebuild(name, flat.pop(name)) for name in list(flat)}
        if history is not None:
            history = {k: _rebuild(f"history/{k}", history.pop(k)) for k in ("loss", "accuracy")}
        params = models.unflatten_params(params)
        return Checkpoint(config.arch, params, config, payload["metrics"], history)
    except Refused as err:
        raise CheckpointError(f"{clean_path(path)}: {err}") from None
    except Exception as err:  # a gap in the checks: still one line, still refused
        why = f"refused, an internal check failed ({type(err).__name__})"
        raise CheckpointError(f"{clean_path(path)}: {why}") from None


def _read(path: Path) -> bytes:
    """The bytes of a regular file (never a FIFO or a device) of at most MAX_CHECKPOINT_BYTES."""
    try:
        _check_file(os.stat(path))
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
        with open(os.open(path, flags), "rb") as f:
            _check_file(os.fstat(f.fileno()))  # swapped for a FIFO after the stat?
            data = f.read(MAX_CHECKPOINT_BYTES + 1)  # more than its size if it grew, or in /proc
    except (FileNotFoundError, NotADirectoryError):
        raise Refused("no such checkpoint file") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        raise Refused(f"cannot read it ({getattr(err, 'strerror', None) or err})") from None
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise Refused(f"grew past {MAX_CHECKPOINT_BYTES:,} bytes while read")
    return data


def _check_file(info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise Refused(f"is {kind}, not a checkpoint file; refused unread")
    if info.st_size > MAX_CHECKPOINT_BYTES:
        raise Refused(f"is {info.st_size:,} bytes, {_over_cap()}; refused unread")


def _rebuild(name: str, record: dict[str, Any]) -> np.ndarray:
    """An ARRAY as an array of its own, finite, within float32's range (jax_iris computes
    in float32, as ``convert`` enforces) and, in the history, within what training records."""
    value = np.frombuffer(record["data"], record["dtype"]).reshape(record["shape"]).copy()
    if not np.all(np.isfinite(value)):
        raise Refused(
            f"{name} holds values that are not finite (NaN or infinite); a trained net's"
            " are finite, so this file is damaged: train or convert again"
        )
    if value.dtype == np.float64 and np.any(np.abs(value) > np.finfo(np.float32).max):
        raise Refused(
            f"{name} holds float64 values beyond float32's range (3.4e38);"
            " jax_iris trains and evaluates in float32"
        )
    low, high = _RANGES.get(name, (-np.inf, np.inf))
    if name in _RANGES and np.any((value < low) | (value > high)):
        raise Refused(f"{name} holds values outside [{low}, {high}]; training never records those")
    return value


def _check(payload: Any) -> TrainConfig:
    """Every key, type and size of a payload of builtins, against the arch's shapes."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise Refused("not a jax_iris checkpoint (no jax_iris format tag)")
    version = payload.get("version")
    if type(version) is not int or version != VERSION:
        other = f"format version {quote(version)}; this jax_iris reads version {VERSION}"
        raise Refused(_V1 if type(version) is int and version == 1 else other)
    if problem := _mismatch(_KEYS, payload):
        raise Refused(f"fields do not match version {VERSION}: {problem}")
    for key in ("config", "params", "history"):
        if not isinstance(payload[key], dict) and (key != "history" or payload[key] is not None):
            raise Refused(f"field {key} is {quote(payload[key])}, not a dict")
    arch, archs, values = payload["arch"], tuple(registry.ARCHS), payload["config"]
    if arch not in archs:
        raise Refused(f"unknown arch {quote(arch)}; expected one of {', '.join(archs)}")
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for key, value in values.items():
        if key not in names:
            raise Refused(f"unknown config field {quote(key)}; expected {', '.join(names)}")
        if type(value) not in (str, int, float, bool):
            raise Refused(f"config field {key} is {quote(value)}, not a number or text")
    try:
        config = TrainConfig.from_dict(values)
    except (TypeError, ValueError, ArithmeticError) as err:  # lr=2**2000: OverflowError
        raise Refused(f"invalid config: {clean(str(err), 160)}") from None
    if config.arch != arch:
        raise Refused(f"config says arch {quote(config.arch)} but the params are for {arch}")
    flat, expected = payload["params"], models.param_shapes(arch)
    if flat.keys() != expected.keys():
        for other in (a for a in archs if flat.keys() == models.param_shapes(a).keys()):
            raise Refused(f"the params are those of the {other} net, not {arch}")
        raise Refused(f"params do not fit the {arch} net: {_mismatch(expected, flat)}")
    for name, shape in expected.items():
        _check_array(name, flat[name], shape, arch)
    if payload["metrics"] is not None:
        _check_metrics(payload["metrics"], "metrics")
    history = payload["history"] or {}
    if history and (problem := _mismatch(("loss", "accuracy"), history)):
        raise Refused(f"the history's fields are not loss and accuracy: {problem}")
    if history:
        loss, accuracy = (_check_array(f"history/{k}", history[k]) for k in ("loss", "accuracy"))
        if loss != accuracy:
            raise Refused(
                f"the history's loss and accuracy differ in length ({loss:,} and {accuracy:,})"
            )
    total = sum(len(record["data"]) for record in [*flat.values(), *history.values()])
    if total > MAX_CHECKPOINT_BYTES:  # more than the file: one bytes object used twice
        raise Refused(f"its arrays hold {total:,} bytes, {_over_cap()}")
    return config


def _check_array(name: str, record: Any, like: tuple[int, ...] = (), arch: str = "") -> int:
    """An ARRAY's length, once checked: the arch's shape ``like`` (none: 1-D), its data."""
    if not isinstance(record, dict) or record.keys() != {"dtype", "shape", "data"}:
        raise Refused(f"{name} is {quote(record)}, not a dict of dtype, shape, data")
    dtype, shape, data = record["dtype"], record["shape"], record["data"]
    listed = type(shape) is list and len(shape) <= 8  # sizes in a message are short
    if not listed or not all(type(n) is int and 0 <= n < 2**63 for n in shape):
        raise Refused(f"{name} has shape {quote(shape)}, not a list of sizes")
    if type(data) is not bytes:
        raise Refused(f"{name} has data {quote(data)}, not bytes")
    if dtype not in ("<f4", "<f8"):
        raise Refused(f"{name} is not a float32/float64 array (dtype {quote(dtype)})")
    if not like and len(shape) != 1:
        raise Refused(f"{name} is not a 1-D float32/float64 array")
    if like and tuple(shape) != like:
        raise Refused(f"{name} has shape {tuple(shape)}, the {arch} net needs {like}")
    if len(data) != (need := math.prod(shape) * int(dtype[2])):
        sizes = f"shape {tuple(shape)} of {np.dtype(dtype).name}"
        raise Refused(f"{name} holds {len(data):,} bytes of data; {sizes} needs {quote(need)}")
    return math.prod(shape)


def _check_metrics(value: Any, where: str, depth: int = 0) -> None:
    """Nested dicts of str keys and floats or None, at most _MAX_METRICS_DEPTH deep."""
    if depth and (value is None or type(value) is float):
        return
    if not isinstance(value, dict) or depth >= _MAX_METRICS_DEPTH:
        deep = f"at most {_MAX_METRICS_DEPTH} deep"
        raise Refused(f"{where} is {quote(value)}; metrics are dicts of numbers, {deep}")
    for key, item in value.items():
        if type(key) is not str:
            raise Refused(f"{where} has a key {quote(key)}, not text")
        _check_metrics(item, f"{where}/{clean(key, 40)}", depth + 1)


def _mismatch(expected: Any, got: Any) -> str:
    """``"missing a, b; unexpected c"``: how the keys differ from those expected, or ''."""
    parts = {"missing": [k for k in expected if k not in got]}
    parts["unexpected"] = [k for k in got if k not in expected]
    return "; ".join(f"{word} {_some(keys)}" for word, keys in parts.items() if keys)


def _some(keys: list[Any]) -> str:
    plain = [
        k if type(k) is str and len(k) <= 60 and k.isprintable() else quote(k) for k in keys[:3]
    ]
    return ", ".join(plain) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
