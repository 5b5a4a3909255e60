"""A pickle of builtins only, checked in one pass before anything is unpickled.

``check`` follows the unpickler's stack, MARKs and memo through ``pickletools.genops``,
building nothing. It allows the opcodes of dict, list, tuple, str, int, float, bool, None
and bytes; memo writes at the next index only and reads of written entries only (the C
unpickler sizes its memo from the index: 9 bytes could cost 4 GB); bounded nesting, opcode
count and texts; one object, then the end. Everything else raises ``Refused``, one line.
``loads`` checks, then unpickles with an unpickler that resolves no global. Imports from
``legacy`` modules, and the calls after them, are followed to the end and refused as
``LegacyRefused``, so that a caller can tell an old file from an attack.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import pickletools
from typing import Any, NoReturn

from jax_iris.quote import clean, quote

MAX_OPCODES = 100_000  # a jax_iris checkpoint has a few hundred
MAX_NESTING = 32  # a jax_iris checkpoint nests 4 deep (params -> array -> shape)
MAX_TEXT = 2**16  # bytes of one str
MAX_TEXT_TOTAL = 2**20  # characters of all strs (decoded, a character takes up to 4 bytes)
_MAX_LINE = 1024  # the argument line of a text opcode (GLOBAL's names, INT's digits)
_TEXT_OPCODES = frozenset(pickle.BINUNICODE + pickle.BINUNICODE8 + pickle.BINSTRING)
_DEEP = f"refused: it nests deeper than {MAX_NESTING} levels"
# The allow-list, with MARK, POP, POP_MARK, STOP, PROTO, FRAME and the memo's opcodes: what
# each pops (None: the objects above the last MARK, and the MARK) and the containers it
# puts around them. Then what a legacy import or call pops, and why the rest is refused.
_SCALARS = "NONE NEWTRUE NEWFALSE BININT BININT1 BININT2 LONG1 BINFLOAT SHORT_BINUNICODE"
_SCALARS += " BINUNICODE BINUNICODE8 SHORT_BINBYTES BINBYTES BINBYTES8"
_MAKE = dict.fromkeys(_SCALARS.split(), (0, 0)) | {"TUPLE1": (1, 1), "TUPLE2": (2, 1)}
_MAKE |= {"EMPTY_DICT": (0, 1), "EMPTY_LIST": (0, 1), "EMPTY_TUPLE": (0, 1), "TUPLE3": (3, 1)}
_MAKE |= {"TUPLE": (None, 1), "LIST": (None, 1), "DICT": (None, 1)}
_FILL = {"APPEND": 1, "SETITEM": 2, "APPENDS": None, "SETITEMS": None}  # into the one below
_PUT, _GET = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}, {"GET", "BINGET", "LONG_BINGET"}
_LEGACY = {"GLOBAL": 0, "STACK_GLOBAL": 2, "REDUCE": 2, "BUILD": 2}
_WHY = dict.fromkeys(["GLOBAL", "STACK_GLOBAL", "INST"], "asks to import {arg}")
_WHY |= dict.fromkeys(["EXT1", "EXT2", "EXT4"], "asks to import extension {arg}")
_CALLS = ["REDUCE", "BUILD", "OBJ", "NEWOBJ", "NEWOBJ_EX", "PERSID", "BINPERSID"]
_WHY |= dict.fromkeys(_CALLS, "asks to call or build objects with pickle opcode {op}")


class Refused(Exception):
    """Why data is refused: one line, without the file's name (the caller puts it first)."""


class LegacyRefused(Refused):
    """Refused for imports from ``legacy`` modules only: an old file, or an attack."""


def loads(data: bytes, *, what: str = "this format", legacy: frozenset[str] = frozenset()) -> Any:
    """``data``'s object, once ``check`` passes, built by an unpickler that resolves no global."""
    check(data, what=what, legacy=legacy)
    try:
        return _NoGlobals(io.BytesIO(data)).load()
    except Exception as err:  # a checked stream can still be malformed (a list as a key)
        kind = f"{type(err).__name__}: {clean(str(err), 120)}"
        raise Refused(f"truncated, corrupt or not a pickle ({kind})") from None


def check(data: bytes, *, what: str = "this format", legacy: frozenset[str] = frozenset()) -> None:
    """Refuse a stream that imports, calls or could exhaust memory; ``what`` names the format
    in messages ("..., which a jax_iris checkpoint never contains")."""
    scan, reader = _Scan(what, legacy), _Reader(data)
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(reader), 1):  # pyright: ignore[reportArgumentType]
            if count > MAX_OPCODES:
                raise Refused(f"refused: more than {MAX_OPCODES:,} pickle opcodes")
            scan.step(op.name, arg)
    except Refused:
        raise
    except Exception as err:  # genops: truncated, unknown opcode, bad argument
        raise Refused(f"truncated, corrupt or not a pickle ({clean(str(err), 120)})") from None
    if reader.pos != len(data):
        raise Refused(f"corrupt: {len(data) - reader.pos:,} bytes follow the end of the pickle")
    if scan.imports:
        more = len(set(scan.imports)) - 1
        names = scan.imports[0] + (f" and {more} more" if more else "")
        raise LegacyRefused(f"refused: it asks to import {names}, which {what} never contains")


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # never reached: check refuses
        raise pickle.UnpicklingError(f"refused: it asks to import {clean(f'{module}.{name}', 80)}")


class _Reader:
    """What ``genops`` reads: a text's length is refused before it is decoded (UTF-8 can take
    four times its size as a str), a line ends within _MAX_LINE bytes. ``genops`` asks
    ``tell()`` before each opcode, so ``read`` knows whose argument it reads."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.opcode_at = data, 0, 0

    def read(self, n: int) -> bytes:
        if n > MAX_TEXT and self.data[self.opcode_at] in _TEXT_OPCODES:
            raise Refused(f"refused: it holds a text of {n:,} bytes, over the {MAX_TEXT:,} allowed")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def readline(self) -> bytes:
        end = self.data.find(b"\n", self.pos, self.pos + _MAX_LINE)
        return self.read(_MAX_LINE if end < 0 else end + 1 - self.pos)

    def tell(self) -> int:
        self.opcode_at = self.pos
        return self.pos


@dataclasses.dataclass(eq=False, slots=True)
class _Object:
    depth: int  # containers nested in it, itself included
    text: str | None = None  # a str's value: the names STACK_GLOBAL imports
    shared: bool = False  # read from the memo: never changed again, so its depth holds


def _deepest(items: list[_Object]) -> int:
    return max((item.depth for item in items), default=0)


class _Scan:
    """The unpickler's stack, MARKs and memo, followed building nothing."""

    def __init__(self, what: str, legacy: frozenset[str]) -> None:
        self.what, self.legacy, self.text, self.imports = what, legacy, 0, []
        self.stack: list[_Object] = []
        self.marks: list[int] = []  # stack lengths at each MARK, as the C unpickler keeps them
        self.memo: list[_Object] = []

    def step(self, name: str, arg: Any) -> None:
        if name in _MAKE:
            (pops, wraps), text = _MAKE[name], arg if isinstance(arg, str) else None
            self.text += len(text or "")
            if self.text > MAX_TEXT_TOTAL:
                raise Refused(f"refused: more than {MAX_TEXT_TOTAL:,} characters of text")
            self.push(_Object(wraps + _deepest(self.pop(pops)), text))
        elif name in _FILL:
            items, (into,) = self.pop(_FILL[name]), self.pop(1)
            if into.shared:  # its depth is counted in the containers holding it
                raise Refused("refused: it changes a container after sharing it (memo)")
            into.depth = max(into.depth, 1 + _deepest(items))
            self.push(into)
        elif name == "MARK":
            if len(self.marks) >= MAX_NESTING:
                raise Refused(_DEEP)
            self.marks.append(len(self.stack))
        elif name in ("POP", "POP_MARK"):
            self.pop(1 if name == "POP" else None)
        elif name in _PUT:
            index, written = len(self.memo) if arg is None else arg, len(self.memo)
            if index != written:
                wrong = "skips unwritten entries" if index > written else "is not the next one"
                raise Refused(f"corrupt: memo index {quote(index)} {wrong}")
            self.memo += self.pop(1)
            self.stack.append(self.memo[-1])
        elif name in _GET:
            if not 0 <= arg < len(self.memo):
                raise Refused(f"corrupt: memo index {quote(arg)} was never written")
            self.memo[arg].shared = True
            self.push(self.memo[arg])
        elif name == "STOP" and (len(self.stack) != 1 or self.marks):
            raise Refused("corrupt: the pickle does not end with one object")
        elif name in _LEGACY and (self.imports or name.endswith("GLOBAL")):
            items = self.pop(_LEGACY[name])
            self.push(_Object(_deepest(items)))
            if name.endswith("GLOBAL"):  # GLOBAL's "module name", STACK_GLOBAL's two texts
                parts = arg.split(" ", 1) if name == "GLOBAL" else [item.text for item in items]
                imported = None if None in parts else ".".join(map(str, parts))
                if imported is None or imported.split(".")[0] not in self.legacy:
                    self.refuse(name, imported)
                self.imports.append(imported)
        elif name not in ("STOP", "PROTO", "FRAME"):
            self.refuse(name, arg.replace(" ", ".", 1) if name == "INST" else arg)

    def refuse(self, name: str, arg: Any) -> NoReturn:
        why = _WHY.get(name, "uses pickle opcode {op}")
        if "{arg}" in why:  # a name or a code; other arguments (an int's digits) are not shown
            arg = "a name computed at load time" if arg is None else clean(str(arg), 80)
        why = why.format(op=name, arg=arg)
        raise Refused(f"refused: it {why}, which {self.what} never contains")

    def pop(self, n: int | None) -> list[_Object]:
        """The top ``n`` objects, or (``None``) those above the last MARK, which goes."""
        if n is None and not self.marks:
            raise Refused("corrupt: a pickle opcode needs a MARK that is not there")
        start = self.marks.pop() if n is None else len(self.stack) - n
        if start < (self.marks[-1] if self.marks else 0):
            raise Refused("corrupt: the pickle stack underflows")
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def push(self, item: _Object) -> None:
        if item.depth > MAX_NESTING:
            raise Refused(_DEEP)
        self.stack.append(item)
