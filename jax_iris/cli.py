"""Command-line plumbing shared by the scripts: flags from TrainConfig, errors as one line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from jax_iris.train import TrainConfig

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
CACHE_ENV = "JAX_IRIS_CACHE_DIR"


class UsageError(Exception):
    """A mistake the user can fix on the command line; printed as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of usage plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def add_config_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per TrainConfig field, typed and defaulted from the dataclass."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(f.default),
            default=f.default,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} (default: {f.default})",
        )


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if hasattr(args, f.name)
    }
    values.update(overrides)
    try:
        return TrainConfig(**values)
    except ValueError as err:
        raise UsageError(f"invalid option: {err}") from None


def check_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Fail before any work if ``path`` cannot hold new files (checked by writing one).

    Nothing is created: the test file goes to the nearest folder that exists.
    """
    path = Path(path)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"cannot write to {path}: {existing} is not a folder; choose another {flag}"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise UsageError(f"cannot write to {path} ({reason}); choose another {flag}") from None
    return path


def enable_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache so a repeated run skips compiling.

    The folder is ``$JAX_IRIS_CACHE_DIR`` or ``~/.cache/jax_iris/xla`` (set the
    variable to an empty string to disable). The thresholds are lowered so that
    these small, fast-compiling programs are cached too.
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
    except OSError:
        return  # a cache is an optimisation: run without it
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


HOST_DEVICES_FLAG = "xla_force_host_platform_device_count"


def use_host_devices(count: int) -> None:
    """Expose the CPU as ``count`` XLA devices, so a sweep's seed axis is sharded over cores.

    XLA:CPU runs these small programs on one core; as several host devices the
    shards run in parallel. It must run before JAX starts its backends, and it
    leaves an ``XLA_FLAGS`` that already sets the count alone. Accelerators
    (GPU, TPU) are unaffected: they are the default devices when present.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if count > 1 and HOST_DEVICES_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --{HOST_DEVICES_FLAG}={count}".strip()


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a script's body; user mistakes become one line on stderr, Ctrl-C exits 130."""
    try:
        return body()
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing half-written was left behind", file=sys.stderr)
        return EXIT_INTERRUPTED
