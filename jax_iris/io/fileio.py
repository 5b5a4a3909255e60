"""Atomic, journaled file writes: every output set is either its old self or completely new.

``commit`` stages every file under a temporary name beside its target, flushes it to
disk, writes a journal, and only then renames. A process killed during the renames
(SIGKILL, a crash, a power cut) leaves the journal: the next commit into any of its
folders, or ``recover(folder)``, finishes the renames before anything else, so a reader
sees a mix at most until then. The journal is the commit point: one killed before it
is complete is rolled back (its temporaries removed), one killed after is completed.

Every file of one commit is named after its id: ``.<name>.<id>.<n>.tmp`` beside each
target, and ``.jax-iris-commit.<id>`` in each folder it writes to (the journal). The
committing process holds a lock (``flock``) on its journals while it lives, so
another process tells a live commit, whose files it leaves alone, from the remains of
a dead one, which it recovers or removes. The kernel drops the lock of a killed
process. On a file system without ``flock`` a journal is never taken for a dead one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from jax_iris import process_life

JOURNAL_PREFIX = ".jax-iris-commit."
_ID_BYTES = 8
_TMP_NAME_CHARS = 40  # of the target's name in a temporary's, so that it fits NAME_MAX
_TMP = re.compile(r"^\..*\.([0-9a-f]{16})\.\d+\.tmp$", re.DOTALL)
_JOURNAL = re.compile(rf"^{re.escape(JOURNAL_PREFIX)}([0-9a-f]{{16}})$")
_NEW_SUFFIX = ".new"  # a journal being created, not yet locked under its name
_NEW_JOURNAL = re.compile(rf"^{re.escape(JOURNAL_PREFIX)}[0-9a-f]{{16}}{_NEW_SUFFIX}$")
_MAX_JOURNAL_BYTES = 64 << 20

Content = bytes | Callable[[BinaryIO], object]  # the bytes, or a writer (its result unused)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, flush it to disk, then rename.

    ``os.replace`` is atomic within a folder, so a crash, an exception or a stop signal
    at any point leaves ``path`` absent or as it was. The new file gets the usual
    permissions (0666 less the umask), not a private 0600. Unlike ``commit`` the folder
    must exist. ``OSError`` propagates to the caller.
    """
    return _commit({Path(path): write}, (), make_folders=False)[0]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def commit(files: Mapping[Path, Content], remove: Iterable[Path] = ()) -> list[Path]:
    """Write several files, and remove others, all-or-nothing.

    Each file is staged under a temporary name beside its target and fsynced; only
    when all are on disk and the journal is written are they renamed into place and
    the ``remove`` paths deleted, with stop signals (Ctrl-C, SIGTERM, SIGHUP) held off
    meanwhile: a signal there lets the commit finish, then raises
    ``process_life.Stopped`` with ``written=True``. An error or a stop signal while
    staging removes the temporaries and leaves every target as it was. Folders are
    created as needed. An unfinished commit of a dead process found in these folders
    is completed (or rolled back) first. Returns the paths written.
    """
    return _commit({Path(p): c for p, c in files.items()}, [Path(p) for p in remove])


def recover(folder: str | os.PathLike) -> list[Path]:
    """Complete (or roll back) the unfinished commits of dead processes in ``folder``
    and remove their temporaries; never raises. Returns the paths it completed."""
    try:
        return _recover_folder(Path(folder))
    except OSError:
        return []


# ---------------------------------------------------------------- the commit


def _commit(
    files: dict[Path, Content], remove: Iterable[Path], make_folders: bool = True
) -> list[Path]:
    # Absolute, so that a recovery from another working folder finds them; a path that
    # is already absolute needs no working folder (it may have been deleted).
    given = list(files)
    files = {path.absolute(): content for path, content in files.items()}
    remove = [path.absolute() for path in remove]
    for path in [*files, *remove]:  # a rename onto a folder would fail only after others
        if path.is_dir() and not path.is_symlink():
            raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(path))
    cid = secrets.token_hex(_ID_BYTES)
    folders = list(dict.fromkeys(p.parent for p in [*files, *remove]))
    renames = [(_tmp_path(path, cid, n), path) for n, path in enumerate(files)]
    journals: dict[Path, int] = {}
    try:
        for folder in folders:
            if make_folders:
                folder.mkdir(parents=True, exist_ok=True)
            recover(folder)
            journals[folder] = _open_journal(folder, cid)
        for (tmp, _), content in zip(renames, files.values()):
            _stage(tmp, content)
        plan = {
            "renames": [[str(tmp), str(path)] for tmp, path in renames],
            "remove": [str(p) for p in remove],
            "journals": [str(_journal_path(folder, cid)) for folder in folders],
        }
        for fd in journals.values():
            _write_all(fd, json.dumps(plan).encode())
            os.fsync(fd)
        for folder in folders:
            _fsync_folder(folder)
    except BaseException:
        for tmp, _ in renames:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        _drop_journals(folders, cid, journals)
        raise
    with process_life.held() as caught:
        _apply(renames, remove)
        for folder in folders:
            _fsync_folder(folder)
        _drop_journals(folders, cid, journals)
    process_life.stop_now(caught, written=True)
    return given


def _tmp_path(path: Path, cid: str, n: int) -> Path:
    return path.with_name(f".{path.name[:_TMP_NAME_CHARS]}.{cid}.{n}.tmp")


def _journal_path(folder: Path, cid: str) -> Path:
    return folder / f"{JOURNAL_PREFIX}{cid}"


def _open_journal(folder: Path, cid: str) -> int:
    """Create this commit's journal in ``folder``, empty and locked while we live.

    It is locked under another name and then renamed, so that no other process ever
    sees it unlocked; stop signals are held meanwhile, so a Ctrl-C leaves nothing.
    """
    journal = _journal_path(folder, cid)
    new = journal.with_name(journal.name + _NEW_SUFFIX)
    with process_life.held() as caught:
        fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with contextlib.suppress(OSError):  # no flock here: never taken for a dead one
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(new, journal)
        except OSError:
            os.close(fd)
            new.unlink(missing_ok=True)
            raise
    if caught:
        os.close(fd)
        journal.unlink(missing_ok=True)
        process_life.stop_now(caught, written=False)
    return fd


def _stage(tmp: Path, content: Content) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        if isinstance(content, bytes):
            f.write(content)
        else:
            content(f)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _apply(renames: Iterable[tuple[Path, Path]], remove: Iterable[Path]) -> None:
    """The renames, then the removals; each step may already be done (a recovery)."""
    for tmp, path in renames:
        if tmp.exists():
            os.replace(tmp, path)
    for path in remove:
        with contextlib.suppress(FileNotFoundError):
            if not (path.is_dir() and not path.is_symlink()):
                path.unlink()


def _drop_journals(folders: Iterable[Path], cid: str, fds: dict[Path, int]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            _journal_path(folder, cid).unlink(missing_ok=True)
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse to open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- recovery


def _recover_folder(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    completed: list[Path] = []
    names = os.listdir(folder)
    live: set[str] = set()
    for name in names:
        match = _JOURNAL.match(name)
        if match:
            outcome = _recover_journal(folder / name)
            if outcome is None:
                live.add(match.group(1))
            else:
                completed += outcome
    for name in names:  # temporaries of dead commits whose journal is gone
        if _NEW_JOURNAL.match(name):
            with _dead_journal(folder / name) as fd:
                if fd is not None:
                    (folder / name).unlink(missing_ok=True)
            continue
        match = _TMP.match(name)
        if (
            match
            and match.group(1) not in live
            and not (folder / name).is_dir()
            and not _journal_path(folder, match.group(1)).exists()
        ):
            with contextlib.suppress(OSError):
                (folder / name).unlink()
    return completed


@contextlib.contextmanager
def _dead_journal(path: Path) -> Iterator[int | None]:
    """The journal's fd, locked, if its process is dead; None if it lives or is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield None  # locked: a live commit (or no flock: cannot tell, leave it)
            return
        yield fd if os.fstat(fd).st_nlink else None  # removed meanwhile: done
    finally:
        os.close(fd)


def _recover_journal(path: Path) -> list[Path] | None:
    """Complete or roll back the commit of a dead process; None if it is alive."""
    with _dead_journal(path) as fd:
        if fd is None:
            return None if path.exists() else []
        with process_life.held() as caught:
            outcome = _settle(path, os.read(fd, _MAX_JOURNAL_BYTES))
        process_life.stop_now(caught, written=False)
        return outcome


def _settle(path: Path, data: bytes) -> list[Path]:
    match = _JOURNAL.match(path.name)
    assert match is not None, f"not a journal: {path}"  # only journals are settled
    cid = match.group(1)
    try:
        plan = json.loads(data)
        renames = [(Path(tmp), Path(target)) for tmp, target in plan["renames"]]
        remove = [Path(p) for p in plan["remove"]]
        journals = [Path(p) for p in plan["journals"]]
    except (ValueError, KeyError, TypeError):  # killed before the journal was complete
        renames, remove, journals = [], [], [path]
    complete = bool(renames or remove) and all(_complete_journal(j, data) for j in journals)
    if complete:
        _apply(renames, remove)
        for folder in dict.fromkeys(target.parent for _, target in renames):
            _fsync_folder(folder)
    else:  # not committed: its temporaries go, the targets stay as they were
        for tmp, _ in renames:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    for journal in journals:
        with contextlib.suppress(OSError):
            journal.unlink(missing_ok=True)
    for name in os.listdir(path.parent):  # its temporaries here, also those not yet planned
        match = _TMP.match(name)
        if match and match.group(1) == cid:
            with contextlib.suppress(OSError):
                (path.parent / name).unlink()
    return [target for _, target in renames] if complete else []


def _complete_journal(journal: Path, expected: bytes) -> bool:
    try:
        return journal.read_bytes() == expected
    except OSError:
        return False
