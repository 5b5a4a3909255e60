"""Checkpoints (format version 2): one pickle of builtins only, written atomically, read safely.

The file is a pickle (protocol 4) of dict, list, str, int, float, bool, None and bytes::

    {"format": "jax_iris.checkpoint", "version": 2, "arch": "atten",
     "config": {...TrainConfig fields...},
     "metrics": {"train": {"loss": float, "accuracy": float}, ...} or None,
     "history": {"loss": ARRAY, "accuracy": ARRAY} or None,      # 1-D, [epochs]
     "params": {"layer_1/k/kernel": ARRAY, ...}}                 # the arch's shapes

each ARRAY ``{"dtype": "<f4" or "<f8", "shape": [4, 10], "data": bytes}`` (C order).
``load`` reads at most ``MAX_CHECKPOINT_BYTES`` of a regular file, checks every opcode in
one pass (``_Scan``) before an unpickler that resolves no global builds the payload, then
takes the arrays' names and shapes from the arch (``models.param_shapes``), as equinox
takes them from a ``like`` tree. Every problem raises ``CheckpointError``: one line that
names the file, what it quotes from the file escaped and cut short (``jax_iris.quote``).
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
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jax_iris import models, registry
from jax_iris.config import TrainConfig
from jax_iris.io.fileio import atomic_write_bytes
from jax_iris.quote import clean, clean_path, quote

FORMAT = "jax_iris.checkpoint"
VERSION = 2
# A history holds 2 values per epoch: at the 10,000,000 epochs a TrainConfig allows,
# 80 MB in float32 (float64: up to about 6 million epochs). The params are ~7 KB.
# Loading holds the file and the unpickled payload at once: about twice this at peak.
MAX_CHECKPOINT_BYTES = 96 * 2**20
MAX_PICKLE_OPCODES = 100_000  # a real checkpoint has a few hundred
MAX_NESTING = 32  # a real checkpoint nests 4 deep (params -> array -> shape)
_DTYPES = {"<f4": "float32", "<f8": "float64"}
_MAX_METRICS_DEPTH = 4
_MAX_LINE = 1024  # a text opcode's argument line; longer is never a jax_iris checkpoint
_MAX_TEXT = 2**16  # bytes of one str; a checkpoint's longest is a parameter name
_MAX_TEXT_TOTAL = 2**20  # characters of all texts (decoded, a character takes up to 4 bytes)
_TEXT_OPCODES = frozenset(pickle.BINUNICODE + pickle.BINUNICODE8 + pickle.BINSTRING)
_KEYS = ("format", "version", "arch", "config", "metrics", "history", "params")
_NEVER = "which a jax_iris checkpoint never contains"
_RETRAIN_HINT = (
    "retrain (python scripts/train.py --arch ARCH) or convert a .pth "
    "(python scripts/convert.py model.pth ARCH.pkl) to get a version 2 file"
)
# The allow-list: these, MARK, POP, POP_MARK, STOP, PROTO and FRAME. Scalars; containers
# made or filled, with the objects each pops (None: those above the last MARK); the memo.
_SCALARS = {"NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT"}
_SCALARS |= {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}
_SCALARS |= {"SHORT_BINBYTES", "BINBYTES", "BINBYTES8"}
_NEW = {"EMPTY_DICT": 0, "EMPTY_LIST": 0, "EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_NEW |= {"DICT": None, "LIST": None, "TUPLE": None}
_FILL = {"APPEND": 1, "SETITEM": 2, "APPENDS": None, "SETITEMS": None}  # into the one below
_PUT, _GET = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}, {"GET", "BINGET", "LONG_BINGET"}
# A version 1 file's numpy objects, followed to the end before it is refused, and the
# names it imports (numpy 2 writes numpy._core, numpy 1 numpy.core).
_V1_OPCODES = {"GLOBAL": 0, "STACK_GLOBAL": 2, "REDUCE": 2, "BUILD": 2}
_V1_GLOBALS = {"numpy.ndarray", "numpy.dtype"} | {
    f"numpy.{core}.{name}"
    for core in ("_core", "core")
    for name in ("multiarray._reconstruct", "numeric._frombuffer")
}
_CALLS = {"REDUCE", "BUILD", "OBJ", "NEWOBJ", "NEWOBJ_EX", "PERSID", "BINPERSID"}


class CheckpointError(Exception):
    """A checkpoint could not be written or read; the message names the file and the problem."""


class Checkpoint(NamedTuple):
    arch: str
    params: models.Params  # {"params": {...}} of numpy arrays, ready for model.apply
    config: TrainConfig
    metrics: dict[str, Any] | None
    history: dict[str, np.ndarray] | None  # {"loss": [epochs], "accuracy": [epochs]}


class _Refused(Exception):
    """One problem; ``load`` and ``encode`` put the file's name before it."""


def _over_cap() -> str:
    return f"more than the {MAX_CHECKPOINT_BYTES:,} bytes a checkpoint may hold"


def _known_archs() -> tuple[str, ...]:
    return tuple(registry.ARCHS)


def encode(
    params: models.Params,
    *,
    config: TrainConfig,
    metrics: dict[str, Any] | None = None,
    history: dict[str, np.ndarray] | None = None,
    path: str | os.PathLike = "checkpoint",
) -> bytes:
    """A checkpoint's bytes, checked as ``load`` checks them (``path`` names it in errors)."""
    records = None if history is None else {k: _array(v) for k, v in _as_dict(history).items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": config.arch,
        "config": {
            k: v.item() if isinstance(v, np.generic) else v for k, v in config.to_dict().items()
        },
        "metrics": None if metrics is None else _plain_metrics(metrics),
        "history": records,
        "params": {k: _array(v) for k, v in models.flatten_params(params).items()},
    }
    try:
        _check(payload)
        data = pickle.dumps(payload, protocol=4)
        if len(data) > MAX_CHECKPOINT_BYTES:
            raise _Refused(
                f"it would be {len(data):,} bytes, {_over_cap()} (is the history that long?)"
            )
        _Scan.check(data)  # what load checks first: only a bug here could fail it
    except _Refused as err:
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


def _as_dict(value: Any) -> Any:
    return value._asdict() if hasattr(value, "_asdict") else value


def _array(value: Any) -> dict[str, Any]:
    """An ARRAY of little-endian floats (another dtype gets no data: the check refuses it)."""
    array = np.asarray(value)
    shape, data = [int(n) for n in array.shape], b""
    if array.dtype.kind == "f":
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        data = array.tobytes()
    return {"dtype": array.dtype.str, "shape": shape, "data": data}


def _plain_metrics(value: Any, depth: int = 0) -> Any:
    """NamedTuples as dicts, numbers as floats; anything else is left for the check to refuse."""
    value = _as_dict(value)
    if isinstance(value, dict) and depth >= _MAX_METRICS_DEPTH:
        return value  # too deep: the check refuses it
    if isinstance(value, dict):
        return {k: _plain_metrics(v, depth + 1) for k, v in value.items()}
    scalar = hasattr(value, "dtype") and np.ndim(value) == 0 and np.dtype(value.dtype).kind in "fiu"
    number = (isinstance(value, numbers.Real) or scalar) and not isinstance(value, bool)
    return float(value) if number else value


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and check a checkpoint: whatever the file, this reads at most
    ``MAX_CHECKPOINT_BYTES``, runs nothing from it and holds about twice its size at peak."""
    try:
        data = _read(Path(path))
        _Scan.check(data)
        try:
            payload = _Unpickler(io.BytesIO(data)).load()
        except Exception as err:  # a scanned stream can still be malformed (a list as a key)
            kind = f"{type(err).__name__}: {clean(str(err), 120)}"
            raise _Refused(f"truncated, corrupt or not a pickle ({kind})") from None
        del data  # not held while the arrays are rebuilt
        return _from_payload(payload)
    except _Refused as err:
        raise CheckpointError(f"{clean_path(path)}: {err}") from None
    except Exception as err:  # a gap in the checks: still one line, still refused
        kind = type(err).__name__
        raise CheckpointError(
            f"{clean_path(path)}: refused, an internal check failed ({kind})"
        ) from None


def _read(path: Path) -> bytes:
    """The bytes of a regular file (never a FIFO or a device) of at most MAX_CHECKPOINT_BYTES."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        _check_file(os.stat(path))
        with open(os.open(path, flags | getattr(os, "O_CLOEXEC", 0)), "rb") as f:
            size = _check_file(os.fstat(f.fileno()))  # swapped for a FIFO after the stat?
            data = f.read(size + 1)
            if len(data) > size:  # it grew (or it is in /proc): read on to the cap
                data += f.read(MAX_CHECKPOINT_BYTES + 1 - len(data))
    except (FileNotFoundError, NotADirectoryError):
        raise _Refused("no such checkpoint file") from None
    except OSError as err:
        raise _Refused(f"cannot read it ({err.strerror or err})") from None
    except ValueError:  # a NUL in the path
        raise _Refused("not a valid file path") from None
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise _Refused(f"grew past {MAX_CHECKPOINT_BYTES:,} bytes while read")
    return data


_FILE_KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device"}
_FILE_KINDS |= {stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _check_file(info: os.stat_result) -> int:
    if stat.S_ISDIR(info.st_mode):
        raise _Refused("is a folder, not a checkpoint file")
    if not stat.S_ISREG(info.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise _Refused(f"is {kind}, not a checkpoint file; refused unread")
    if info.st_size > MAX_CHECKPOINT_BYTES:
        raise _Refused(f"is {info.st_size:,} bytes, {_over_cap()}; refused unread")
    return info.st_size


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # never reached: the scan refuses
        raise pickle.UnpicklingError(f"refused: it asks to import {clean(f'{module}.{name}', 80)}")


class _Reader:
    """What ``genops`` reads: lines end within _MAX_LINE bytes, a text's length is refused
    before it is decoded (UTF-8 can take four times its size as a str), a long argument is a
    view, not a copy. ``genops`` asks ``tell()`` before each opcode: ``read`` knows whose."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.opcode_at = data, 0, 0

    def read(self, n: int) -> bytes | memoryview:
        if n > _MAX_TEXT and self.data[self.opcode_at] in _TEXT_OPCODES:
            raise _Refused(f"refused: it holds a text of {n:,} bytes; a checkpoint's are short")
        chunk = (self.data if n <= _MAX_TEXT else memoryview(self.data))[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def readline(self) -> bytes:
        end = self.data.find(b"\n", self.pos, self.pos + _MAX_LINE)
        line = self.data[self.pos : self.pos + _MAX_LINE if end < 0 else end + 1]
        self.pos += len(line)
        return line

    def tell(self) -> int:
        self.opcode_at = self.pos
        return self.pos


@dataclasses.dataclass(eq=False, slots=True)
class _Object:
    depth: int  # containers nested in it, itself included
    text: str | None = None  # a str's value: the names a version 1 file imports
    shared: bool = False  # read from the memo: never changed again, so its depth holds


class _Scan:
    """The unpickler's stack, MARKs and memo, followed opcode by opcode building nothing:
    pops never cross a MARK, the memo is written at the next index only and read only where
    written, containers nest at most MAX_NESTING deep, STOP leaves exactly one object."""

    def __init__(self) -> None:
        self.stack: list[_Object] = []
        self.marks: list[int] = []  # stack lengths at each MARK, as the C unpickler keeps them
        self.memo: list[_Object] = []
        self.text, self.imports, self.calls = 0, [], []

    @classmethod
    def check(cls, data: bytes) -> None:
        """Refuse, before it is unpickled, a stream that imports, calls or could exhaust memory."""
        scan, reader = cls(), _Reader(data)
        try:
            for count, (op, arg, _) in enumerate(pickletools.genops(reader), 1):  # pyright: ignore[reportArgumentType]
                if count > MAX_PICKLE_OPCODES:
                    raise _Refused(f"refused: more than {MAX_PICKLE_OPCODES:,} pickle opcodes")
                scan.step(op.name, arg)
        except _Refused:
            raise
        except Exception as err:  # genops: truncated, unknown opcode, bad argument
            raise _Refused(f"truncated, corrupt or not a pickle ({clean(str(err), 120)})") from None
        if reader.pos != len(data):
            raise _Refused(
                f"corrupt: {len(data) - reader.pos:,} bytes follow the end of the pickle"
            )
        if scan.imports and FORMAT.encode() in data:
            raise _Refused(
                f"format version 1 (numpy objects inside), no longer read: {_RETRAIN_HINT}"
            )
        if scan.imports:
            more = len(set(scan.imports)) - 1
            more_text = f" and {more} more" if more else ""
            raise _Refused(f"refused: it asks to import {scan.imports[0]}{more_text}, {_NEVER}")
        if scan.calls:
            raise _Refused(f"refused: it {_refusal(scan.calls[0], None)}, {_NEVER}")

    def step(self, name: str, arg: Any) -> None:
        if name in _SCALARS:
            self.text += len(arg) if isinstance(arg, str) else 0
            if self.text > _MAX_TEXT_TOTAL:
                raise _Refused(f"refused: more than {_MAX_TEXT_TOTAL:,} characters of text")
            self.push(_Object(0, arg if isinstance(arg, str) else None))
        elif name in _NEW:
            self.push(_Object(1 + max((item.depth for item in self.pop(_NEW[name])), default=0)))
        elif name in _FILL:
            items = self.pop(_FILL[name])
            (into,) = self.pop(1)
            if into.shared:  # its depth is counted in the containers holding it
                raise _Refused("refused: it changes a container after sharing it (memo)")
            into.depth = max([into.depth, *(item.depth + 1 for item in items)])
            self.push(into)
        elif name == "MARK":
            if len(self.marks) >= MAX_NESTING:
                raise _Refused(f"refused: it nests deeper than {MAX_NESTING} levels")
            self.marks.append(len(self.stack))
        elif name == "POP" and self.marks and self.marks[-1] == len(self.stack):
            self.marks.pop()  # POP right after MARK drops the mark, as in the C unpickler
        elif name in ("POP", "POP_MARK"):
            self.pop(1 if name == "POP" else None)
        elif name in _PUT:
            index, written = len(self.memo) if name == "MEMOIZE" else arg, len(self.memo)
            if index != written:
                wrong = "skips unwritten entries" if index > written else "is not the next one"
                raise _Refused(f"corrupt: memo index {quote(index)} {wrong}")
            self.memo += self.pop(1)
            self.stack.append(self.memo[-1])
        elif name in _GET:
            if not 0 <= arg < len(self.memo):
                raise _Refused(f"corrupt: memo index {quote(arg)} was never written")
            self.memo[arg].shared = True
            self.push(self.memo[arg])
        elif name == "STOP":
            if len(self.stack) != 1 or self.marks:
                raise _Refused("corrupt: the pickle does not end with one object")
        elif name in _V1_OPCODES:
            self.version_1(name, arg)
        elif name not in ("PROTO", "FRAME"):
            raise _Refused(f"refused: it {_refusal(name, arg)}, {_NEVER}")

    def pop(self, n: int | None) -> list[_Object]:
        """The top ``n`` objects, or (``None``) those above the last MARK, which goes."""
        if n is None and not self.marks:
            raise _Refused("corrupt: a pickle opcode needs a MARK that is not there")
        start = self.marks.pop() if n is None else len(self.stack) - n
        if n is not None and start < (self.marks[-1] if self.marks else 0):
            raise _Refused("corrupt: the pickle stack underflows")
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def push(self, item: _Object) -> None:
        if item.depth > MAX_NESTING:
            raise _Refused(f"refused: it nests deeper than {MAX_NESTING} levels")
        self.stack.append(item)

    def version_1(self, name: str, arg: Any) -> None:
        """Note the import or call of a version 1 file, for the end; refuse any other import."""
        items = self.pop(_V1_OPCODES[name])
        self.push(_Object(max((item.depth for item in items), default=0)))
        texts = [arg.replace(" ", ".", 1)] if name == "GLOBAL" else [item.text for item in items]
        imported = None if None in texts else ".".join(t for t in texts if t is not None)
        if name in _CALLS:
            self.calls.append(name)
        elif imported in _V1_GLOBALS:
            self.imports.append(imported)
        else:
            shown = clean(imported, 80) if imported else "a name computed at load time"
            raise _Refused(f"refused: it asks to import {shown}, {_NEVER}")


def _refusal(name: str, arg: Any) -> str:
    if name == "INST":
        return f"asks to import {clean(arg.replace(' ', '.', 1), 80)}"
    if name.startswith("EXT"):
        return f"asks to import extension {arg}"
    if name in _CALLS:
        return f"asks to call or build objects with pickle opcode {name}"
    return f"uses pickle opcode {name}"


def _from_payload(payload: Any) -> Checkpoint:
    """The checked payload's arrays, rebuilt (each record freed once copied), checked finite
    and within float32's range (jax_iris computes in float32, as ``convert`` enforces)."""
    config, flat, history = _check(payload), payload["params"], payload["history"]
    params = {name: _rebuild(flat.pop(name)) for name in list(flat)}
    if history is not None:
        history = {key: _rebuild(history.pop(key)) for key in ("loss", "accuracy")}
    named = [*params.items(), *((f"history/{k}", v) for k, v in (history or {}).items())]
    for name, value in named:
        if not np.all(np.isfinite(value)):
            raise _Refused(
                f"{name} holds values that are not finite (NaN or infinite); a trained net's"
                " are finite, so this file is damaged: train or convert again"
            )
        if value.dtype == np.float64 and np.any(np.abs(value) > np.finfo(np.float32).max):
            raise _Refused(
                f"{name} holds float64 values beyond float32's range (3.4e38);"
                " jax_iris trains and evaluates in float32"
            )
    accuracy, loss = (history["accuracy"], history["loss"]) if history else (0.0, 0.0)
    if np.any((accuracy < 0) | (accuracy > 1)) or np.any(loss < 0):
        raise _Refused(
            "the history holds an accuracy outside [0, 1] or a negative loss;"
            " a training run never records those, so this file is damaged"
        )
    return Checkpoint(
        config.arch, models.unflatten_params(params), config, payload["metrics"], history
    )


def _rebuild(record: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(record["data"], record["dtype"]).reshape(record["shape"]).copy()


def _check(payload: Any) -> TrainConfig:
    """Every key, type and size of a payload of builtins, against the arch's shapes."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise _Refused("not a jax_iris checkpoint (no jax_iris format tag)")
    version = payload.get("version")
    if type(version) is int and version == 1:
        raise _Refused(f"format version 1, no longer read: {_RETRAIN_HINT}")
    if type(version) is not int or version != VERSION:
        raise _Refused(f"format version {quote(version)}; this jax_iris reads version {VERSION}")
    if problem := _mismatch(_KEYS, payload):
        raise _Refused(f"fields do not match version {VERSION}: {problem}")
    arch, archs, values = payload["arch"], _known_archs(), payload["config"]
    if type(arch) is not str or arch not in archs:
        raise _Refused(f"unknown arch {quote(arch)}; expected one of {', '.join(archs)}")
    if not isinstance(values, dict):
        raise _Refused(f"the config is {quote(values)}, not a dict")
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for key, value in values.items():
        if type(key) is not str or key not in names:
            raise _Refused(f"unknown config field {quote(key)}; expected {', '.join(names)}")
        if type(value) not in (str, int, float, bool):
            raise _Refused(f"config field {key} is {quote(value)}, not a number or text")
    try:
        config = TrainConfig.from_dict(values)
    except (TypeError, ValueError, ArithmeticError) as err:  # lr=2**2000: OverflowError
        raise _Refused(f"invalid config: {clean(str(err), 160)}") from None
    if config.arch != arch:
        raise _Refused(f"config says arch {quote(config.arch)} but the params are for {arch}")
    flat, expected = payload["params"], models.param_shapes(arch)
    if not isinstance(flat, dict):
        raise _Refused(f"the params are {quote(flat)}, not a dict")
    if flat.keys() != expected.keys():
        for other in archs:
            if other != arch and flat.keys() == models.param_shapes(other).keys():
                raise _Refused(f"the params are those of the {other} net, not {arch}")
        raise _Refused(f"params do not fit the {arch} net: {_mismatch(expected, flat)}")
    for name, shape in expected.items():
        _check_array(name, flat[name], shape, arch)
    if payload["metrics"] is not None:
        _check_metrics(payload["metrics"], "metrics")
    history = payload["history"]
    if history is not None and not isinstance(history, dict):
        raise _Refused(f"the history is {quote(history)}, not a dict of loss and accuracy")
    if history is not None and (problem := _mismatch(("loss", "accuracy"), history)):
        raise _Refused(f"the history's fields are not loss and accuracy: {problem}")
    if history is not None:
        loss, accuracy = (_check_array(f"history/{k}", history[k]) for k in ("loss", "accuracy"))
        if loss != accuracy:
            raise _Refused(
                f"the history's loss and accuracy differ in length ({loss:,} and {accuracy:,})"
            )
    total = sum(len(record["data"]) for record in [*flat.values(), *(history or {}).values()])
    if total > MAX_CHECKPOINT_BYTES:  # more than the file: one bytes object used twice
        raise _Refused(f"its arrays hold {total:,} bytes, {_over_cap()}")
    return config


def _check_array(
    name: str, record: Any, like: tuple[int, ...] | None = None, arch: str = ""
) -> int:
    """An ARRAY's length, once checked: the arch's shape ``like`` (None: 1-D), its data."""
    if not isinstance(record, dict) or record.keys() != {"dtype", "shape", "data"}:
        raise _Refused(f"{name} is {quote(record)}, not a dict of dtype, shape, data")
    dtype, shape, data = record["dtype"], record["shape"], record["data"]
    if type(shape) is not list or len(shape) > 8 or any(type(n) is not int or n < 0 for n in shape):
        raise _Refused(f"{name} has shape {quote(shape)}, not a list of sizes")
    if type(data) is not bytes:
        raise _Refused(f"{name} has data {quote(data)}, not bytes")
    if type(dtype) is not str or dtype not in _DTYPES:
        raise _Refused(f"{name} is not a float32/float64 array (dtype {quote(dtype)})")
    if like is None and len(shape) != 1:
        raise _Refused(f"{name} is not a 1-D float32/float64 array")
    if like is not None and tuple(shape) != like:
        needs = f"the {arch} net needs {_shape_text(like)}"
        raise _Refused(f"{name} has shape {_shape_text(shape)}, {needs}")
    if len(data) != (need := math.prod(shape) * int(dtype[2])):
        sizes = f"shape {_shape_text(shape)} of {_DTYPES[dtype]}"
        raise _Refused(f"{name} holds {len(data):,} bytes of data; {sizes} needs {quote(need)}")
    return math.prod(shape)


def _check_metrics(value: Any, where: str, depth: int = 0) -> None:
    """Nested dicts of str keys and floats or None, at most _MAX_METRICS_DEPTH deep."""
    if depth and (value is None or type(value) is float):
        return
    if not isinstance(value, dict) or depth >= _MAX_METRICS_DEPTH:
        deep = f"at most {_MAX_METRICS_DEPTH} deep"
        raise _Refused(f"{where} is {quote(value)}; metrics are dicts of numbers, {deep}")
    for key, item in value.items():
        if type(key) is not str:
            raise _Refused(f"{where} has a key {quote(key)}, not text")
        _check_metrics(item, f"{where}/{clean(key, 40)}", depth + 1)


def _mismatch(expected: Any, got: Any) -> str:
    """``"missing a, b; unexpected c"``: how the keys differ from those expected, or ''."""
    missing = [key for key in expected if key not in got]
    unexpected = [key for key in got if key not in expected]
    parts = (("missing", missing), ("unexpected", unexpected))
    return "; ".join(f"{word} {_some(keys)}" for word, keys in parts if keys)


def _some(keys: list[Any]) -> str:
    plain = [
        k if type(k) is str and len(k) <= 60 and k.isprintable() else quote(k) for k in keys[:3]
    ]
    return ", ".join(plain) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _shape_text(shape: tuple[int, ...] | list[int]) -> str:
    sizes = [quote(n, 24) for n in shape]
    return f"({sizes[0]},)" if len(sizes) == 1 else f"({', '.join(sizes)})"
