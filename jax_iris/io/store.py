"""The sweep's results store: every finished chunk on disk at once, so a sweep resumes.

Layout under the sweep's ``--out``::

    .sweep-store/<key>/manifest.json         what the sweep is (JSON, written once)
    .sweep-store/<key>/<arch>-<head>/<i>.chunk   chunk i of that grid

``key`` is the first 16 hex digits of the SHA-256 of the manifest's canonical
JSON, so another sweep (config, versions, platform) has another folder and a
folder's manifest cannot be edited unnoticed. A chunk file is raw little-endian
float32 arrays behind a short JSON header: no pickle, nothing to execute. Its
size follows from the manifest, so reading one takes bounded memory and time; a
file of another size, header or checksum is refused and the chunk trained again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jax_iris.io.fileio import atomic_write_bytes
from jax_iris.quote import clean_path, quote

FORMAT = "jax_iris.sweep-store"
VERSION = 1
STORE_DIR = ".sweep-store"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 * 2**20  # a million-net grid's lr list is far smaller
MAX_HEADER_BYTES = 2**16
MAGIC = b"JXIRCHK1"
SPLITS = ("train", "val", "test")
METRICS = ("loss", "accuracy")


class StoreError(Exception):
    """The store cannot be used as asked; the message is one line saying what to do."""


class ChunkArrays(NamedTuple):
    """One chunk's numbers: ``final`` [c, 3 splits, 2 metrics]; the rest when kept."""

    final: np.ndarray  # float32 [c, 3, 2]
    history: np.ndarray | None  # float32 [c, epochs, 2]
    params: dict[str, np.ndarray] | None  # "layer_1/k/kernel" -> float32 [c, ...]


def canonical(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode()


def manifest_key(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(manifest)).hexdigest()[:16]


def differences(mine: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields where two manifests differ, in order."""
    found = []
    for name in dict.fromkeys([*mine, *theirs]):
        a, b = mine.get(name), theirs.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{name}.")
        elif a != b:
            found.append(f"{prefix}{name}")
    return found


def _lookup(manifest: dict[str, Any], dotted: str) -> Any:
    value: Any = manifest
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def describe_difference(mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    """'--lr (0.01 there, 0.5 here)' for the first differing field."""
    names = differences(mine, theirs)
    if not names:
        return "nothing"
    name = names[0]
    flag = name.startswith(("sweep.", "train.")) and not name.endswith(".dtype")
    shown = "--" + name.split(".")[-1].replace("_", "-") if flag else name.replace(".", " ")
    there, here = _shown(_lookup(theirs, name)), _shown(_lookup(mine, name))
    more = f" and {len(names) - 1} more field(s)" if len(names) > 1 else ""
    return f"{shown} ({there} there, {here} here){more}"


def _shown(value: Any) -> str:
    """A manifest value quoted for a message; a list of texts (XLA flags) as its words."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return quote(" ".join(value) or "none", 120)
    return quote(value, 60)


def read_manifest(path: Path) -> dict[str, Any]:
    """A manifest file, bounded; StoreError if it is not one."""
    shown = clean_path(path)
    try:
        with open(path, "rb", opener=_nonblocking) as f:
            info = os.fstat(f.fileno())
            if not _is_regular(info) or info.st_size > MAX_MANIFEST_BYTES:
                raise StoreError(f"{shown} is not a sweep manifest (not a file of sane size)")
            data = f.read(MAX_MANIFEST_BYTES + 1)
        value = json.loads(data.decode("utf-8"))
    except StoreError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else "not JSON"
        raise StoreError(f"cannot read the sweep manifest {shown} ({reason})") from None
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise StoreError(f"{shown} is not a jax_iris sweep manifest")
    return value


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def _is_regular(info: os.stat_result) -> bool:
    import stat

    return stat.S_ISREG(info.st_mode)


class Store:
    """The chunks of one sweep (one manifest) under ``out/.sweep-store/<key>``."""

    def __init__(self, out: Path, manifest: dict[str, Any]) -> None:
        self.out = Path(out)
        self.manifest = manifest
        self.key = manifest_key(manifest)
        self.folder = self.out / STORE_DIR / self.key
        self.epochs = int(manifest["train"]["epochs"])
        self.keep_history = bool(manifest["sweep"]["keep_history"])

    # --- the manifest --------------------------------------------------------------

    def others(self) -> list[Path]:
        """Other sweeps' store folders under ``out``, newest first."""
        root = self.out / STORE_DIR
        if not root.is_dir():
            return []
        found = [p for p in root.iterdir() if p.is_dir() and p.name != self.key]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    def check_others(self, fresh: bool) -> None:
        """Refuse a different sweep's store in ``out`` unless ``fresh``."""
        if fresh or self.folder.is_dir():
            return
        for other in self.others():
            manifest = other / MANIFEST
            if not manifest.exists():
                continue
            try:
                theirs = read_manifest(manifest)
            except StoreError:
                continue
            what = describe_difference(self.manifest, theirs)
            names = differences(self.manifest, theirs)
            machine = names[0].startswith(("versions", "platform", "device_kind"))
            if names[0] == "xla_flags":
                resume = "resume it with the same XLA_FLAGS (and JAX_IRIS_XLA_FLAGS)"
            elif machine:
                resume = "resume it with those versions there"
            else:
                resume = "run with the same flags to resume it"
            raise StoreError(
                f"{clean_path(self.out)} holds another sweep: {what}; {resume}, add --fresh"
                " to replace it (nothing changes until the new sweep is complete), or choose"
                " another --out"
            )

    def open(self) -> None:
        """Create the folder and manifest, or check the existing manifest is this one."""
        path = self.folder / MANIFEST
        data = canonical(self.manifest)
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{MANIFEST}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            try:
                os.link(tmp, path)  # fails if another shard made it first: then compare
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        theirs = read_manifest(path)
        if canonical(theirs) != data:
            raise StoreError(
                f"the sweep manifest {clean_path(path)} was changed by hand or by another"
                f" version ({describe_difference(self.manifest, theirs)}); remove"
                f" {clean_path(self.folder)} or add --fresh to start this sweep anew"
            )

    # --- chunks --------------------------------------------------------------------

    def chunk_path(self, arch: str, head: str, index: int) -> Path:
        return self.folder / f"{arch}-{head}" / f"{index:06d}.chunk"

    def expected(self, arch: str, head: str, index: int, nets: int, shapes: dict) -> list:
        """The arrays a chunk holds, as (name, shape), in file order."""
        arrays: list[tuple[str, tuple[int, ...]]] = [("final", (nets, 3, 2))]
        if self.keep_history:
            arrays.append(("history", (nets, self.epochs, 2)))
        for name, shape in (shapes or {}).items():
            arrays.append((f"params/{name}", (nets, *shape)))
        return arrays

    def _header(self, arch: str, head: str, index: int, arrays: list, digest: str) -> bytes:
        header = {
            "format": FORMAT,
            "store": self.key,
            "grid": f"{arch}-{head}",
            "index": index,
            "arrays": [[name, list(shape)] for name, shape in arrays],
            "sha256": digest,
        }
        return json.dumps(header, sort_keys=True).encode()

    def write(self, arch: str, head: str, index: int, chunk: ChunkArrays, shapes: dict) -> Path:
        """Write one chunk atomically (a reader sees it whole or not at all)."""
        nets = len(chunk.final)
        arrays = self.expected(arch, head, index, nets, shapes)
        values = [chunk.final]
        if self.keep_history:
            assert chunk.history is not None, "this store keeps history: the chunk has none"
            values.append(chunk.history)
        if shapes:
            assert chunk.params is not None, "this store keeps params: the chunk has none"
            values += [chunk.params[name] for name in shapes]
        payload = b"".join(np.ascontiguousarray(v, "<f4").tobytes() for v in values)
        header = self._header(arch, head, index, arrays, hashlib.sha256(payload).hexdigest())
        path = self.chunk_path(arch, head, index)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, MAGIC + struct.pack("<I", len(header)) + header + payload)
        except OSError as err:
            raise StoreError(
                f"cannot write {clean_path(path)} ({err.strerror or err}); the chunks stored"
                " before it are kept: make room or remove what is in the way, then run the"
                " same command again to resume"
            ) from None
        return path

    def read(self, arch: str, head: str, index: int, nets: int, shapes: dict) -> ChunkArrays | None:
        """The stored chunk, None if absent; StoreError (one line) if damaged or foreign."""
        path = self.chunk_path(arch, head, index)
        arrays = self.expected(arch, head, index, nets, shapes)
        sizes = [int(np.prod(shape)) * 4 for _, shape in arrays]
        try:
            with open(path, "rb", opener=_nonblocking) as f:
                info = os.fstat(f.fileno())
                if not _is_regular(info):
                    raise _Bad("not a regular file")
                head_len = self._header_length(f)
                total = len(MAGIC) + 4 + head_len + sum(sizes)
                if info.st_size != total:
                    raise _Bad(f"{info.st_size} bytes where {total} were expected")
                header = f.read(head_len)
                payload = f.read(sum(sizes))
        except FileNotFoundError:
            return None
        except _Bad as err:
            raise StoreError(
                f"{clean_path(path)} is damaged or from another sweep ({err})"
            ) from None
        except OSError as err:
            raise StoreError(f"cannot read {clean_path(path)} ({err.strerror or err})") from None
        digest = hashlib.sha256(payload).hexdigest()
        if header != self._header(arch, head, index, arrays, digest):
            raise StoreError(
                f"{clean_path(path)} is damaged or from another sweep (its header or checksum"
                " does not match)"
            )
        values, offset = [], 0
        for (_, shape), size in zip(arrays, sizes):
            values.append(np.frombuffer(payload, "<f4", size // 4, offset).reshape(shape))
            offset += size
        final = values[0]
        history = values[1] if self.keep_history else None
        rest = values[2:] if self.keep_history else values[1:]
        params = dict(zip(shapes, rest)) if shapes else None
        return ChunkArrays(final, history, params)

    @staticmethod
    def _header_length(f: Any) -> int:
        start = f.read(len(MAGIC) + 4)
        if len(start) < len(MAGIC) + 4 or start[: len(MAGIC)] != MAGIC:
            raise _Bad("not a chunk file")
        (length,) = struct.unpack("<I", start[len(MAGIC) :])
        if length > MAX_HEADER_BYTES:
            raise _Bad("header too long")
        return length

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while writing the final outputs, so shards finishing together take turns."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


class _Bad(Exception):
    pass
