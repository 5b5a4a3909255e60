"""What the commands share: flags derived from the configs, checks before work, one-line errors.

Nothing here imports jax at module level, so ``--help`` and every bad-flag error
answer before jax is loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from jax_iris import process_life, registry
from jax_iris.config import ConfigError, TrainConfig
from jax_iris.quote import clean, clean_path, quote

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM gives 143, SIGHUP 129 (process_life)
NOTHING_WRITTEN = "nothing was written, earlier files are as they were"
OUTPUTS_WRITTEN = "every output had been written in full"
CACHE_ENV = "JAX_IRIS_CACHE_DIR"
CACHE_ENTRY_SUFFIX = "-cache"  # JAX's file cache: <key>-cache, with <key>-atime beside
_CACHE_WARNINGS = (  # how JAX words a cache entry it could not read or write
    "Error reading persistent compilation cache",
    "Error writing persistent compilation cache",
)
HOST_DEVICES_FLAG = "xla_force_host_platform_device_count"


class UsageError(Exception):
    """A mistake the user can fix on the command line; printed as one line, exit 2."""


class Interrupted(Exception):
    """Ctrl-C, re-raised with what the command had already written (``kept``)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of usage plus error."""

    def __init__(self, *args: Any, prog: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, prog=prog_name(prog) if prog else None, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per field of the config dataclass ``cls``, typed and defaulted from it.

    A bool field becomes a switch, a tuple field takes one or more values
    (``nargs`` in its metadata), a field with ``choices`` in its metadata lists them.
    """
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta, default = f.metadata, f.default
        kwargs: dict[str, Any] = {"default": default, "dest": f.name}
        if isinstance(default, bool):
            kwargs["action"] = "store_true"
            help_default = ""
        else:
            sample = default[0] if isinstance(default, tuple) else default
            kwargs.update(type=type(sample), metavar=f.name.upper())
            if "nargs" in meta:
                assert isinstance(default, tuple), f"{f.name}: a nargs field needs a tuple default"
                kwargs.update(nargs=meta["nargs"], default=list(default))
            if "choices" in meta:
                kwargs["choices"] = list(meta["choices"]())
                kwargs.pop("metavar")
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            help_default = f" (default: {shown})"
        parser.add_argument(flag_name(f.name), help=meta["help"] + help_default, **kwargs)


def add_arch_flag(parser: argparse.ArgumentParser, default: Sequence[str]) -> None:
    """``--arch NAME [NAME ...]``: registered nets, or ``both`` for the blog's two."""
    parser.add_argument(
        "--arch",
        nargs="+",
        choices=[*registry.ARCHS, registry.BOTH],
        default=list(default),
        help=f"one or more nets; {registry.BOTH!r} means "
        f"{' and '.join(registry.blog_archs())} (default: {' '.join(default)})",
    )


def build_config(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)``; a bad value becomes a UsageError naming its flag."""
    try:
        return cls(**values)
    except ConfigError as err:
        raise UsageError(f"{flag_name(err.field)} {err.problem}") from None


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values.update(overrides)
    return build_config(TrainConfig, values)


def check_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Fail before any work if ``path`` cannot hold new files (checked by writing one).

    Nothing is created: the test file goes to the nearest folder that exists. A
    dangling symlink or a name too long for the file system is refused here too.
    """
    path = Path(path)
    shown = clean_path(path)
    if not path.is_absolute() and working_folder_gone():
        raise UsageError(
            f"cannot write to {shown}: the working folder no longer exists;"
            f" cd to an existing folder or give {flag} an absolute path"
        )
    try:
        if path.is_symlink() and not path.exists():
            raise UsageError(
                f"cannot write to {shown}: it is a dangling symlink; choose another {flag}"
            )
        existing = path
        while not existing.exists():
            if existing.is_symlink():
                raise UsageError(
                    f"cannot write to {shown}: {clean_path(existing)} is a dangling symlink;"
                    f" choose another {flag}"
                )
            existing = existing.parent
        _check_name_lengths(path, existing)
    except OSError as err:
        raise UsageError(
            f"cannot write to {shown} ({_reason(err)}); choose another {flag}"
        ) from None
    if not existing.is_dir():
        raise UsageError(
            f"cannot write to {shown}: {clean_path(existing)} is not a folder;"
            f" choose another {flag}"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UsageError(
            f"cannot write to {shown} ({_reason(err)}); choose another {flag}"
        ) from None
    return path


def working_folder_gone() -> bool:
    """Whether the working folder has been deleted (relative paths then lead nowhere)."""
    try:
        os.getcwd()
    except FileNotFoundError:
        return True
    return False


def _check_name_lengths(path: Path, existing: Path) -> None:
    """Each part still to be created must fit the file system's name limit."""
    limit = os.pathconf(existing if existing.is_dir() else existing.parent, "PC_NAME_MAX")
    for part in path.relative_to(existing).parts if path != existing else ():
        if len(os.fsencode(part)) > limit:
            raise OSError(36, f"the name {quote(part, 40)} is longer than {limit} bytes")


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def enable_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache so a repeated run skips compiling.

    The folder is ``$JAX_IRIS_CACHE_DIR`` or ``~/.cache/jax_iris/xla`` (set the
    variable to an empty string to disable). The thresholds are lowered so that
    these small, fast-compiling programs are cached too. A cache is only an
    optimisation, so its problems cost at most one line on stderr and never the run:
    a folder that cannot be written turns the cache off; empty entries (left by a
    full disk) are removed first; an entry JAX then fails to read or write is
    reported once, and after an unreadable one the cache's entries are removed so that the
    next run is clean (public JAX only: which entry failed and how JAX encodes entries are
    JAX's internals).
    """
    import jax

    folder = os.environ.get(CACHE_ENV)
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = str(Path(base) / "jax_iris" / "xla")
    if not folder:
        return
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        _drop_cache_entries(Path(folder), keep=lambda entry: entry.stat().st_size > 0)
    except OSError as err:
        note(f"compilation cache off ({quote(folder, 120)}: {_reason(err)}); compiling afresh")
        return
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    _cache_warnings_once(Path(folder))


def _drop_cache_entries(folder: Path, keep: Callable[[Path], bool]) -> None:
    """Remove the cache entries that ``keep`` rejects; JAX compiles those programs afresh."""
    for entry in folder.glob(f"*{CACHE_ENTRY_SUFFIX}"):
        with contextlib.suppress(OSError):
            if entry.is_file() and not keep(entry):
                entry.unlink()
                key = entry.name.removesuffix(CACHE_ENTRY_SUFFIX)
                entry.with_name(f"{key}-atime").unlink(missing_ok=True)


def _cache_warnings_once(folder: Path) -> None:
    """JAX warns once per program about a cache entry it cannot read or write (a full
    disk, a truncated entry): say it in one line, once, and let the run go on."""
    show = warnings.showwarning
    said = False

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        nonlocal said
        text = str(message)
        if not text.startswith(_CACHE_WARNINGS):
            show(message, category, filename, lineno, file, line)
            return
        if not said:
            said = True
            if text.startswith(_CACHE_WARNINGS[0]):
                # JAX names the program, not the entry, and its format is its own:
                # every entry goes, and the next run compiles afresh once.
                _drop_cache_entries(folder, keep=lambda entry: False)
            problem = text.split("': ", 1)[-1]
            note(
                f"compilation cache problem in {quote(str(folder), 120)} ({problem});"
                " compiling afresh where needed"
            )

    warnings.showwarning = showwarning


def use_host_devices(count: int) -> None:
    """Expose the CPU as ``count`` XLA devices, so a sweep's net axis is sharded over cores.

    XLA:CPU runs these small programs on one core; as several host devices the
    shards run in parallel. It must run before JAX starts its backends, and it
    leaves an ``XLA_FLAGS`` that already sets the count alone. Accelerators
    (GPU, TPU) are unaffected: they are the default devices when present.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if count > 1 and HOST_DEVICES_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --{HOST_DEVICES_FLAG}={count}".strip()


def one_line(text: str) -> str:
    """Any message as one line: control characters escaped, long texts cut."""
    return clean(" ".join(str(text).split()), 1000)


def note(message: str) -> None:
    """A remark on stderr that does not stop the run."""
    print(one_line(message), file=sys.stderr, flush=True)


_invoked_as: str | None = None  # "jax-iris train" while the dispatcher runs a command


@contextlib.contextmanager
def invoked_as(name: str) -> Iterator[None]:
    """Name the command as the user typed it (``jax-iris train``) in its messages."""
    global _invoked_as
    before, _invoked_as = _invoked_as, name
    try:
        yield
    finally:
        _invoked_as = before


def prog_name(prog: str) -> str:
    """``prog`` (``train.py``), or the name the user typed (``jax-iris train``)."""
    return _invoked_as or prog


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body; user mistakes become one line on stderr, stop signals too.

    Ctrl-C exits 130, SIGTERM 143, SIGHUP 129 (128 + the signal, see
    ``process_life``), with one line saying what was kept. Output that cannot be
    encoded is escaped, and a closed or full stdout does not stop the run, so that
    printing never loses a result.
    """
    prog = prog_name(prog)
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = process_life.SafeStream.wrap(stdout, None, "stdout")
    sys.stderr = process_life.SafeStream.wrap(stderr, None, "stderr")
    try:
        process_life.begin()
        return body()
    except (UsageError, registry.PluginError) as err:  # a broken plugin, in every command
        print(f"{prog}: error: {one_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as err:
        return _stopped(prog, one_line(str(err)))
    except BaseException as err:
        if process_life.is_stop(err):  # a library's own error in the stop's place included
            kept = OUTPUTS_WRITTEN if getattr(err, "written", False) else NOTHING_WRITTEN
            return _stopped(prog, kept)
        if not isinstance(err, OSError) or err.errno != errno.ENAMETOOLONG:
            raise
        # A path checked by the file system only: refused whole, as any bad flag.
        shown = clean_path(err.filename, 80) if err.filename else "a path"
        print(
            f"{prog}: error: {shown}: {err.strerror}; choose a shorter path or name."
            f" {NOTHING_WRITTEN.capitalize()}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    finally:
        process_life.end()
        sys.stdout, sys.stderr = stdout, stderr


def _stopped(prog: str, kept: str) -> int:
    signum = process_life.received()
    print(f"{prog}: {process_life.describe(signum)}; {kept}", file=sys.stderr, flush=True)
    return process_life.exit_status(signum)
