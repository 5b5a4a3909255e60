"""Atomic file writes: a file is either its old self or completely new, never half-written."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, flush it to disk, then rename.

    ``os.replace`` is atomic within a folder, so a crash, an exception or Ctrl-C at
    any point leaves ``path`` absent or as it was; the temporary file is removed
    unless the process is killed outright (SIGKILL), which can leave a hidden
    ``.<name>.*.tmp`` beside it. The new file gets the usual permissions (0666 less
    the umask), not mkstemp's private 0600. ``OSError`` propagates to the caller.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


Content = bytes | Callable[[BinaryIO], None]


def commit(files: dict[Path, Content]) -> list[Path]:
    """Write several files all-or-nothing: every one staged and flushed first, then renamed.

    Each file goes to a temporary name beside its target and is fsynced; only when
    all are on disk are they renamed into place, with Ctrl-C held off during the
    renames. An error or Ctrl-C while staging removes the temporaries and leaves
    every target as it was. Folders are created as needed.
    """
    for path in files:  # a rename onto a folder would fail only after earlier renames
        if Path(path).is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(path))
    staged: list[tuple[str, Path]] = []
    try:
        for path, content in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                if isinstance(content, bytes):
                    f.write(content)
                else:
                    content(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    with _sigint_held():
        for tmp, path in staged:
            os.replace(tmp, path)
    return [path for _, path in staged]


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold off Ctrl-C until the block is done; a no-op off the main thread.

    A handler that only records the signal, not a signal mask: the mask would
    cover the main thread alone, and SIGINT can be delivered to any of JAX's
    threads. A Ctrl-C during the renames lets them finish; the run then completes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
