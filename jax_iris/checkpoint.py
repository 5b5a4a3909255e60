"""Checkpoints (format version 2): one pickle of builtins only, written atomically, read safely.

The file is a pickle (protocol 4) of a dict that holds nothing but dict, list, str,
int, float, bool, None and bytes::

    {"format": "jax_iris.checkpoint", "version": 2, "arch": "atten",
     "config": {...TrainConfig fields...},
     "metrics": {"train": {"loss": float, "accuracy": float}, ...} or None,
     "history": {"loss": ARRAY, "accuracy": ARRAY} or None,      # 1-D, [epochs]
     "params": {"layer_1/k/kernel": ARRAY, ...}}                 # the arch's shapes

where each ARRAY is ``{"dtype": "<f4" or "<f8", "shape": [4, 10], "data": bytes}``
(little-endian, C order). Loading never builds a numpy object from the stream:

1. the path must be a regular file (``stat`` first, then ``open`` with ``O_NONBLOCK``
   and ``fstat`` again, so a FIFO or a device is never read) of at most
   ``MAX_CHECKPOINT_BYTES``, and at most that many bytes are read;
2. the opcodes are scanned with ``pickletools.genops`` before anything is unpickled:
   any opcode that imports or calls (or builds a type other than the builtins above),
   a memo index not yet written, nesting deeper than ``MAX_NESTING``, more than
   ``MAX_PICKLE_OPCODES`` opcodes, long texts, a missing ``STOP`` or bytes after it
   are refused;
3. an unpickler that resolves no global at all builds the builtins;
4. every key, type, dtype string, shape and data length is checked against the
   arch, and arrays are rebuilt with ``numpy.frombuffer(...).copy()``.

Every problem raises ``CheckpointError`` with one line naming the file; content
quoted from the file is escaped and cut short (``jax_iris.quote``). A version 1 file
(numpy arrays pickled in-band) is refused with a line saying how to get a new one.
"""

from __future__ import annotations

import dataclasses
import io
import math
import numbers
import os
import pickle
import pickletools
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jax_iris import models, registry
from jax_iris.config import TrainConfig
from jax_iris.fileio import atomic_write_bytes
from jax_iris.quote import clean, clean_path, quote

FORMAT = "jax_iris.checkpoint"
VERSION = 2
# A history holds 2 values per epoch: at the 10,000,000 epochs a TrainConfig allows,
# 80 MB in float32 (float64: up to about 6 million epochs). The params are ~7 KB.
# Loading holds the file and the unpickled payload at once: about twice this at peak.
MAX_CHECKPOINT_BYTES = 96 * 2**20
MAX_PICKLE_OPCODES = 100_000  # a real checkpoint has a few hundred
MAX_NESTING = 32  # a real checkpoint nests 4 deep (params -> array -> shape)
_PICKLE_PROTOCOL = 4  # builtins only: the stream names no global
_DTYPES = {"<f4": "float32", "<f8": "float64"}
_MAX_NDIM = 8
_MAX_METRICS_DEPTH = 4
_MAX_LINE = 1024  # a text opcode's argument line; longer is never a jax_iris checkpoint
_MAX_TEXT = 2**16  # bytes of one str; a checkpoint's longest is a parameter name
_MAX_TEXT_TOTAL = 2**20  # characters of all texts (decoded, a character takes up to 4 bytes)
_TEXT_OPCODES = {pickle.BINUNICODE, pickle.BINUNICODE8, pickle.UNICODE, pickle.BINSTRING}
_KEYS = ("format", "version", "arch", "config", "metrics", "history", "params")
_HISTORY_KEYS = ("loss", "accuracy")
_ARRAY_KEYS = ("dtype", "shape", "data")
_RETRAIN_HINT = (
    "retrain (python scripts/train.py --arch ARCH) or convert a .pth "
    "(python scripts/convert.py model.pth ARCH.pkl) to get a version 2 file"
)

# Opcodes that import or call: never in a version 2 file.
_IMPORT_OR_CALL = frozenset(
    {"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}
    | {"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"}
)
# Opcodes that push one builtin scalar. The scan handles the stack, memo and container
# opcodes of the builtins one by one; any other opcode is refused.
_SCALARS = frozenset(
    {"NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT"}
    | {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES"}
    | {"BINBYTES8"}
)
# The globals a version 1 file named (numpy 2 writes numpy._core, numpy 1 numpy.core).
_V1_GLOBALS = frozenset(
    {
        "numpy.ndarray",
        "numpy.dtype",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.numeric._frombuffer",
        "numpy.core.numeric._frombuffer",
    }
)


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


def _known_archs() -> tuple[str, ...]:
    return tuple(registry.ARCHS)


def flatten_params(params: models.Params) -> dict[str, np.ndarray]:
    """``{"params": {"layer_1": {"k": {"kernel": a}}}}`` -> ``{"layer_1/k/kernel": a}``."""
    tree = params.get("params", params) if isinstance(params, dict) else params
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in path): np.asarray(leaf) for path, leaf in flat}


def unflatten_params(flat: dict[str, np.ndarray]) -> models.Params:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return {"params": tree}


# ---------------------------------------------------------------- saving


def encode(
    params: models.Params,
    *,
    config: TrainConfig,
    metrics: dict[str, Any] | None = None,
    history: dict[str, np.ndarray] | None = None,
    path: str | os.PathLike = "checkpoint",
) -> bytes:
    """A checkpoint's bytes, checked as ``load`` checks them (``path`` only names it in errors).

    Commands that write several files at once (``fileio.commit``) take these bytes;
    ``save`` writes them to one file.
    """
    shown = clean_path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": config.arch,
        "config": {k: _plain_scalar(v) for k, v in config.to_dict().items()},
        "metrics": None if metrics is None else _plain_metrics(shown, metrics, "metrics", 0),
        "history": None if history is None else {k: _encode(v) for k, v in _items(history)},
        "params": {k: _encode(v) for k, v in flatten_params(params).items()},
    }
    _check_payload(shown, payload)
    data = pickle.dumps(payload, protocol=_PICKLE_PROTOCOL)
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"cannot write {shown}: it would be {len(data):,} bytes, {_over_cap()} "
            "(is the history that long?)"
        )
    try:
        _scan(data)
    except _Refused as err:  # only a bug in this module can get here
        raise CheckpointError(f"cannot write {shown}: {err}") from None
    return data


def save(
    path: str | os.PathLike,
    params: models.Params,
    *,
    config: TrainConfig,
    metrics: dict[str, Any] | None = None,
    history: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a checkpoint atomically: a temporary file beside ``path``, then ``os.replace``.

    The payload is checked as ``load`` checks it, so what is written can be read
    back. A failure at any point leaves ``path`` as it was (absent or the previous file).
    """
    data = encode(params, config=config, metrics=metrics, history=history, path=path)
    try:
        return atomic_write_bytes(path, data)
    except OSError as err:
        raise CheckpointError(f"cannot write {clean_path(path)}: {err.strerror or err}") from None


def _items(history: Any) -> list[tuple[Any, Any]]:
    return list((history._asdict() if hasattr(history, "_asdict") else history).items())


def _encode(value: Any) -> dict[str, Any]:
    array = np.asarray(value)
    if array.dtype.kind != "f":  # refused by the check, with the dtype named
        return {"dtype": array.dtype.str, "shape": list(array.shape), "data": b""}
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {
        "dtype": little.dtype.str,
        "shape": [int(n) for n in array.shape],
        "data": little.tobytes(),
    }


def _plain_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _plain_metrics(shown: str, value: Any, where: str, depth: int) -> Any:
    """Metrics as builtins: nested dicts (NamedTuples accepted) of floats or None."""
    if hasattr(value, "_asdict"):
        value = value._asdict()
    if isinstance(value, Mapping) and depth < _MAX_METRICS_DEPTH:
        return {k: _plain_metrics(shown, v, f"{where}/{k}", depth + 1) for k, v in value.items()}
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if hasattr(value, "dtype") and np.ndim(value) == 0 and np.dtype(value.dtype).kind in "fiu":
        return float(value)
    raise CheckpointError(
        f"cannot write {shown}: {clean(str(where), 80)} is {quote(value)}; metrics are "
        f"dicts of numbers, at most {_MAX_METRICS_DEPTH} deep"
    )


# ---------------------------------------------------------------- loading


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint. Raises ``CheckpointError`` naming the file and problem.

    Whatever the file, this reads at most ``MAX_CHECKPOINT_BYTES``, runs nothing from
    it, and returns within seconds holding about twice the file's size at peak.
    """
    path = Path(path)
    shown = clean_path(path)
    data = _read(path, shown)
    try:
        _scan(data)
    except _Refused as err:
        raise CheckpointError(f"{shown}: {err}") from None
    try:
        payload = _Unpickler(io.BytesIO(data)).load()
    except Exception as err:  # a malformed stream can raise many types; none is ours
        raise CheckpointError(
            f"{shown}: truncated, corrupt or not a pickle "
            f"({type(err).__name__}: {clean(str(err), 120)})"
        ) from None
    del data
    try:
        return _from_payload(shown, payload)
    except CheckpointError:
        raise
    except Exception as err:  # a gap in the checks: still one line, still refused
        raise CheckpointError(
            f"{shown}: refused, an internal check failed ({type(err).__name__})"
        ) from None


def _read(path: Path, shown: str) -> bytes:
    """The file's bytes, if it is a regular file of at most MAX_CHECKPOINT_BYTES."""
    try:
        _check_file(shown, os.stat(path))
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CheckpointError(f"{shown}: no such checkpoint file") from None
    except NotADirectoryError:
        raise CheckpointError(f"{shown}: no such checkpoint file (a parent is a file)") from None
    except OSError as err:
        raise CheckpointError(f"{shown}: cannot read it ({err.strerror or err})") from None
    except ValueError:  # a NUL in the path
        raise CheckpointError(f"{shown}: not a valid file path") from None
    with open(fd, "rb") as f:
        _check_file(shown, os.fstat(f.fileno()))  # swapped for a FIFO after the stat?
        try:
            data = f.read(MAX_CHECKPOINT_BYTES + 1)  # buffered: reads until EOF or the cap
        except OSError as err:
            raise CheckpointError(f"{shown}: cannot read it ({err.strerror or err})") from None
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{shown}: grew past {MAX_CHECKPOINT_BYTES:,} bytes while read")
    return data


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_file(shown: str, info: os.stat_result) -> None:
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        raise CheckpointError(f"{shown}: is a folder, not a checkpoint file")
    if not stat.S_ISREG(mode):
        kind = next((kind for test, kind in _SPECIAL_FILES if test(mode)), "not a regular file")
        raise CheckpointError(f"{shown}: is {kind}, not a checkpoint file; refused unread")
    if info.st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{shown}: is {info.st_size:,} bytes, {_over_cap()}; refused unread")


class _Unpickler(pickle.Unpickler):
    """Builds builtins only: every global and persistent id is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused: it asks to import {clean(f'{module}.{name}', 80)}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused: it asks for a persistent object")


# ---------------------------------------------------------------- the opcode scan


class _Refused(Exception):
    pass


class _Reader:
    """The file ``genops`` reads: lines end within _MAX_LINE bytes, texts within _MAX_TEXT.

    ``genops`` asks ``tell()`` before each opcode, so ``read`` knows which opcode
    wants its bytes, and refuses a long text before it is decoded (UTF-8 text can
    take four times its size once decoded).
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._opcode_at = 0

    def read(self, n: int = -1) -> bytes:
        if n > _MAX_TEXT and self._data[self._opcode_at : self._opcode_at + 1] in _TEXT_OPCODES:
            raise _Refused(f"refused: it holds a text of {n:,} bytes; a checkpoint's are short")
        end = len(self._data) if n < 0 else self._pos + n
        chunk = self._data[self._pos : end]
        self._pos += len(chunk)
        return chunk

    def readline(self) -> bytes:
        end = self._data.find(b"\n", self._pos, self._pos + _MAX_LINE)
        return self.read(_MAX_LINE if end < 0 else end + 1 - self._pos)

    def tell(self) -> int:
        self._opcode_at = self._pos
        return self._pos


class _Item(NamedTuple):
    """What the scan knows of one stack entry: how deep it nests, and its text if a str."""

    depth: int
    text: str | None = None


def _scan(data: bytes) -> None:
    """Refuse, before unpickling, any stream that imports, calls or could exhaust memory."""
    scan = _Scan()
    reader = _Reader(data)
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(reader), 1):
            if count > MAX_PICKLE_OPCODES:
                raise _Refused(f"refused: more than {MAX_PICKLE_OPCODES:,} pickle opcodes")
            scan.step(op, arg)
    except _Refused:
        raise
    except Exception as err:  # genops: truncated, unknown opcode, bad argument
        raise _Refused(f"truncated, corrupt or not a pickle ({clean(str(err), 120)})") from None
    if not scan.stopped:
        raise _Refused("truncated, corrupt or not a pickle (no STOP opcode)")
    if reader.tell() != len(data):
        raise _Refused(f"corrupt: {len(data) - reader.tell():,} bytes follow the end of the pickle")
    _refuse_imports(data, scan.imports, scan.refused_ops)


class _Scan:
    """The unpickler's stack and memo, simulated opcode by opcode without building anything.

    A memo index must name an entry already written (or, to write, the next one);
    pops never cross a MARK; containers nest at most MAX_NESTING deep; texts total
    at most _MAX_TEXT_TOTAL; STOP must leave exactly one object. Opcodes that import,
    call or build other types are collected, with the names they import, and
    reported once the whole stream has been read.
    """

    def __init__(self) -> None:
        self.stack: list[_Item] = []
        self.marks: list[int] = []  # stack lengths at each MARK, as the C unpickler keeps them
        self.memo: list[_Item] = []
        self.text = 0
        self.stopped = False
        self.imports: list[str] = []
        self.refused_ops: list[str] = []

    def step(self, op: pickletools.OpcodeInfo, arg: Any) -> None:
        name = op.name
        if name in _SCALARS:
            if isinstance(arg, str):
                self.text += len(arg)
                if self.text > _MAX_TEXT_TOTAL:
                    raise _Refused(f"refused: more than {_MAX_TEXT_TOTAL:,} characters of text")
            self.push(0, arg if isinstance(arg, str) else None)
        elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
            self.push(1)
        elif name == "MARK":
            if len(self.marks) >= MAX_NESTING:
                raise _Refused(f"refused: it nests deeper than {MAX_NESTING} levels")
            self.marks.append(len(self.stack))
        elif name in ("DICT", "LIST", "TUPLE"):
            self.push(1 + max((i.depth for i in self.pop_mark()), default=0))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            self.push(1 + max(i.depth for i in self.pop(int(name[-1]))))
        elif name in ("APPEND", "SETITEM"):
            self.fill(self.pop(1 if name == "APPEND" else 2))
        elif name in ("APPENDS", "SETITEMS"):
            self.fill(self.pop_mark())
        elif name == "POP" and self.marks and self.marks[-1] == len(self.stack):
            self.marks.pop()  # POP right after MARK drops the mark, as in the C unpickler
        elif name == "POP":
            self.pop()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            self.stack.extend(self.pop() * 2)
        elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            self.put(len(self.memo) if name == "MEMOIZE" else arg)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg >= len(self.memo):
                raise _Refused(f"corrupt: memo index {quote(arg)} was never written")
            self.stack.append(self.memo[arg])
        elif name == "STOP":
            if len(self.stack) != 1 or self.marks:
                raise _Refused("corrupt: the pickle does not end with one object")
            self.stopped = True
        elif name not in ("PROTO", "FRAME"):
            self.other(op, arg)

    def pop(self, n: int = 1) -> list[_Item]:
        fence = self.marks[-1] if self.marks else 0
        if len(self.stack) - n < fence:
            raise _Refused("corrupt: the pickle stack underflows")
        items = self.stack[len(self.stack) - n :]
        del self.stack[len(self.stack) - n :]
        return items

    def pop_mark(self) -> list[_Item]:
        if not self.marks:
            raise _Refused("corrupt: a pickle opcode needs a MARK that is not there")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def push(self, depth: int, text: str | None = None) -> None:
        if depth > MAX_NESTING:
            raise _Refused(f"refused: it nests deeper than {MAX_NESTING} levels")
        self.stack.append(_Item(depth, text))

    def fill(self, items: list[_Item]) -> None:
        """The container on top of the stack receives ``items``."""
        (container,) = self.pop()
        self.push(max([container.depth] + [i.depth + 1 for i in items]))

    def put(self, index: int) -> None:
        if index > len(self.memo):
            raise _Refused(f"corrupt: memo index {quote(index)} skips unwritten entries")
        (top,) = self.pop()
        self.stack.append(top)
        self.memo[index : index + 1] = [top]

    def other(self, op: pickletools.OpcodeInfo, arg: Any) -> None:
        """An opcode a checkpoint never holds: note it (and any name it imports), keep going."""
        self.refused_ops.append(op.name)
        before = op.stack_before
        if pickletools.markobject in before:
            self.pop_mark()
            popped = self.pop(before.index(pickletools.markobject))
        else:
            popped = self.pop(len(before))
        if op.name in ("GLOBAL", "INST"):
            self.imports.append(str(arg).replace(" ", ".", 1))
        elif op.name == "STACK_GLOBAL":
            module, name = (item.text for item in popped)
            known = module is not None and name is not None
            self.imports.append(f"{module}.{name}" if known else "a name computed at load time")
        elif op.name in ("EXT1", "EXT2", "EXT4"):
            self.imports.append(f"extension {arg}")
        for _ in op.stack_after:
            self.push(max((i.depth for i in popped), default=0))


def _refuse_imports(data: bytes, imports: list[str], refused_ops: list[str]) -> None:
    if not refused_ops:
        return
    only_calls = set(refused_ops) <= _IMPORT_OR_CALL
    if imports and only_calls and set(imports) <= _V1_GLOBALS and FORMAT.encode() in data:
        raise _Refused(f"format version 1 (numpy objects inside), no longer read: {_RETRAIN_HINT}")
    foreign = [name for name in imports if name not in _V1_GLOBALS] or imports
    if foreign:
        more = f" and {len(set(foreign)) - 1} more" if len(set(foreign)) > 1 else ""
        raise _Refused(
            f"refused: it asks to import {clean(foreign[0], 80)}{more}, "
            "which a jax_iris checkpoint never contains"
        )
    first = next((op for op in refused_ops if op in _IMPORT_OR_CALL), refused_ops[0])
    what = "asks to call or build objects with" if first in _IMPORT_OR_CALL else "uses"
    raise _Refused(
        f"refused: it {what} pickle opcode {first}, which a jax_iris checkpoint never contains"
    )


# ---------------------------------------------------------------- checking the payload


class _Checked(NamedTuple):
    arch: str
    config: TrainConfig
    metrics: dict[str, Any] | None


def _from_payload(shown: str, payload: Any) -> Checkpoint:
    checked = _check_payload(shown, payload)
    params = {name: _rebuild(record) for name, record in payload["params"].items()}
    history = payload["history"]
    if history is not None:
        history = {key: _rebuild(history[key]) for key in _HISTORY_KEYS}
    _check_values(shown, params, history)
    return Checkpoint(
        checked.arch, unflatten_params(params), checked.config, checked.metrics, history
    )


def _check_values(
    shown: str, params: dict[str, np.ndarray], history: dict[str, np.ndarray] | None
) -> None:
    """Values that load but would break later: params and history must be finite and fit
    float32 (what jax_iris computes in, as ``convert`` enforces), accuracy in [0, 1]."""
    limit = float(np.finfo(np.float32).max)
    named = [(name, value) for name, value in params.items()]
    named += [(f"history/{key}", value) for key, value in (history or {}).items()]
    for name, value in named:
        if not np.all(np.isfinite(value)):
            raise CheckpointError(
                f"{shown}: {name} holds values that are not finite (NaN or infinite);"
                " a trained net's are finite, so this file is damaged: train or convert again"
            )
        if value.dtype == np.float64 and np.any(np.abs(value) > limit):
            raise CheckpointError(
                f"{shown}: {name} holds float64 values beyond float32's range (3.4e38);"
                " jax_iris trains and evaluates in float32"
            )
    if history is not None:
        accuracy, loss = history["accuracy"], history["loss"]
        if np.any((accuracy < 0) | (accuracy > 1)) or np.any(loss < 0):
            raise CheckpointError(
                f"{shown}: the history holds an accuracy outside [0, 1] or a negative loss;"
                " a training run never records those, so this file is damaged"
            )


def _rebuild(record: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(record["dtype"])
    return np.frombuffer(record["data"], dtype=dtype).reshape(record["shape"]).copy()


def _check_payload(shown: str, payload: Any) -> _Checked:
    """Every key, type and size of a payload of builtins; raises CheckpointError."""

    def fail(problem: str) -> CheckpointError:
        return CheckpointError(f"{shown}: {problem}")

    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise fail("not a jax_iris checkpoint (no jax_iris format tag)")
    version = payload.get("version")
    if type(version) is int and version == 1:
        raise fail(f"format version 1, no longer read: {_RETRAIN_HINT}")
    if type(version) is not int or version != VERSION:
        raise fail(f"format version {quote(version)}; this jax_iris reads version {VERSION}")
    unknown = [key for key in payload if key not in _KEYS]
    missing = [key for key in _KEYS if key not in payload]
    if unknown or missing:
        raise fail(f"fields do not match version {VERSION}: {_listing(missing, unknown)}")
    arch = payload["arch"]
    archs = _known_archs()
    if type(arch) is not str or arch not in archs:
        raise fail(f"unknown arch {quote(arch)}; expected one of {', '.join(archs)}")
    config = _check_config(fail, payload["config"])
    if config.arch != arch:
        raise fail(f"config says arch {quote(config.arch)} but the params are for {arch}")
    _check_params(fail, arch, payload["params"])
    metrics = payload["metrics"]
    if metrics is not None:
        _check_metrics(fail, metrics, "metrics", 0)
    history = payload["history"]
    if history is not None:
        _check_history(fail, history)
    arrays = [*payload["params"].values(), *(history.values() if history else ())]
    total = sum(len(record["data"]) for record in arrays)  # more than the file if shared
    if total > MAX_CHECKPOINT_BYTES:
        raise fail(f"its arrays hold {total:,} bytes, {_over_cap()}")
    return _Checked(arch, config, metrics)


def _check_config(fail, values: Any) -> TrainConfig:
    if not isinstance(values, dict):
        raise fail(f"the config is {quote(values)}, not a dict")
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for key, value in values.items():
        if type(key) is not str or key not in names:
            raise fail(f"unknown config field {quote(key)}; expected {', '.join(names)}")
        if type(value) not in (str, int, float, bool):
            raise fail(f"config field {key} is {quote(value)}, not a number or text")
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise fail(f"invalid config: {clean(str(err), 160)}") from None


def _check_params(fail, arch: str, flat: Any) -> None:
    if not isinstance(flat, dict):
        raise fail(f"the params are {quote(flat)}, not a dict")
    expected = models.param_shapes(arch)
    names = set(flat)
    if names != set(expected):
        for other in _known_archs():
            if other != arch and names == set(models.param_shapes(other)):
                raise fail(f"the params are those of the {other} net, not {arch}")
    problems = []
    missing = [name for name in expected if name not in flat]
    unexpected = [name for name in flat if name not in expected]
    if missing or unexpected:
        problems.append(_listing(missing, unexpected))
    for name, shape in expected.items():
        if name not in flat:
            continue
        dtype_str, got = _check_array(fail, name, flat[name])
        if dtype_str not in _DTYPES:
            problems.append(f"{name} is not a float32/float64 array (dtype {quote(dtype_str)})")
        elif got != shape:
            needs = f"the {arch} net needs {_shape_text(shape)}"
            problems.append(f"{name} has shape {_shape_text(got)}, {needs}")
    if problems:
        raise fail(f"params do not fit the {arch} net: {'; '.join(problems)}")
    for name in expected:
        _check_data(fail, name, flat[name])


def _check_history(fail, history: Any) -> None:
    if not isinstance(history, dict):
        raise fail(f"the history is {quote(history)}, not a dict of loss and accuracy")
    unknown = [key for key in history if key not in _HISTORY_KEYS]
    missing = [key for key in _HISTORY_KEYS if key not in history]
    if unknown or missing:
        raise fail(f"the history's fields are not loss and accuracy: {_listing(missing, unknown)}")
    lengths = []
    for key in _HISTORY_KEYS:
        dtype_str, shape = _check_array(fail, f"history/{key}", history[key])
        if dtype_str not in _DTYPES or len(shape) != 1:
            raise fail(f"history/{key} is not a 1-D float32/float64 array")
        _check_data(fail, f"history/{key}", history[key])
        lengths.append(shape[0])
    if lengths[0] != lengths[1]:
        raise fail(
            f"the history's loss and accuracy differ in length ({lengths[0]:,} and {lengths[1]:,})"
        )


def _check_array(fail, name: str, record: Any) -> tuple[str, tuple[int, ...]]:
    """An array record's dtype string and shape, once its fields have the right types."""
    if not isinstance(record, dict) or set(record) != set(_ARRAY_KEYS):
        raise fail(f"{name} is {quote(record)}, not a dict of {', '.join(_ARRAY_KEYS)}")
    dtype_str, shape, data = (record[key] for key in _ARRAY_KEYS)
    if type(dtype_str) is not str:
        raise fail(f"{name} has dtype {quote(dtype_str)}, not a dtype string")
    if (
        type(shape) is not list
        or len(shape) > _MAX_NDIM
        or not all(type(n) is int and n >= 0 for n in shape)
    ):
        raise fail(f"{name} has shape {quote(shape)}, not a list of sizes")
    if type(data) is not bytes:
        raise fail(f"{name} has data {quote(data)}, not bytes")
    return dtype_str, tuple(shape)


def _check_data(fail, name: str, record: dict[str, Any]) -> None:
    """The data is exactly as long as the (checked) dtype and shape say."""
    dtype_str, shape, data = (record[key] for key in _ARRAY_KEYS)
    need = math.prod(shape) * np.dtype(dtype_str).itemsize
    if len(data) != need:
        raise fail(
            f"{name} holds {len(data):,} bytes of data; shape {_shape_text(shape)} "
            f"of {_DTYPES[dtype_str]} needs {quote(need)}"
        )


def _check_metrics(fail, value: Any, where: str, depth: int) -> None:
    if not isinstance(value, dict) or depth >= _MAX_METRICS_DEPTH:
        raise fail(
            f"{where} is {quote(value)}; metrics are dicts of numbers, "
            f"at most {_MAX_METRICS_DEPTH} deep"
        )
    for key, item in value.items():
        if type(key) is not str:
            raise fail(f"{where} has a key {quote(key)}, not text")
        inner = f"{where}/{clean(key, 40)}"
        if isinstance(item, dict):
            _check_metrics(fail, item, inner, depth + 1)
        elif item is not None and type(item) is not float:
            raise fail(f"{inner} is {quote(item)}, not a number")


def _listing(missing: list[Any], unexpected: list[Any]) -> str:
    parts = []
    if missing:
        parts.append(f"missing {_some(missing)}")
    if unexpected:
        parts.append(f"unexpected {_some(unexpected)}")
    return "; ".join(parts)


def _some(names: list[Any], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(_name(n) for n in names[:shown]) + more


def _name(value: Any) -> str:
    """A key for a message: plain if it is short printable text, else quoted."""
    if isinstance(value, str) and len(value) <= 60 and value.isprintable():
        return value
    return quote(value, 60)


def _shape_text(shape: tuple[int, ...] | list[int]) -> str:
    sizes = [quote(n, 24) for n in shape]
    return f"({sizes[0]},)" if len(sizes) == 1 else f"({', '.join(sizes)})"
