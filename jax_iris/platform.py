"""Platform-aware defaults, chosen in one place; importing this module imports no jax.

- ``group_size(platform)``: nets trained together in one vmapped step. On CPU a small
  group keeps a step's activations in cache (8 was the best of 4, 8, 16 and 32,
  measured); on a GPU or TPU one wide step is the natural shape, so a fixed large
  group. Fixed per platform, never derived from a sweep's size: the per-net program is
  what must stay the same for a net's numbers not to depend on the sweep around it.
- ``default_host_devices()``: how many XLA devices the CPU is shown as (one per core
  this process may use), so a sweep's shards run in parallel.
- ``xla_flags(platform)`` and ``apply_xla_flags(flags)``: the extra XLA flags worth
  setting on a platform, kept to those this jaxlib accepts (XLA aborts the process on
  a flag it does not know), added to ``XLA_FLAGS`` before the backend starts, never
  overriding a flag the user set.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

CPU = "cpu"
ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")  # names jax.default_backend() and users give
CPU_GROUP_SIZE = 8
ACCELERATOR_GROUP_SIZE = 1024
MAX_HOST_DEVICES = 1024
# Measured on XLA:CPU: at most ~10% on the grouped sweep; harmless where accepted.
CPU_XLA_FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type=-reduce",
    "--xla_cpu_enable_fast_min_max=true",
)
PROBE_TIMEOUT_S = 120
PROBE_CACHE_NAME = "xla-flags.json"  # {"<jaxlib version> <flags>": accepted}


def check_platform(platform: str) -> str:
    """``platform`` lower-cased, or ValueError naming the platforms known."""
    name = str(platform).lower()
    if name != CPU and name not in ACCELERATORS:
        known = ", ".join((CPU, *ACCELERATORS))
        raise ValueError(f"unknown platform {str(platform)[:40]!r}: expected one of {known}")
    return name


def group_size(platform: str) -> int:
    """Nets per vmapped step: 8 on CPU, 1024 on a GPU or TPU."""
    return CPU_GROUP_SIZE if check_platform(platform) == CPU else ACCELERATOR_GROUP_SIZE


def default_host_devices() -> int:
    """The CPU cores this process may run on (its affinity mask), 1 to 1024."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_HOST_DEVICES))


def xla_flags(platform: str) -> list[str]:
    """The extra XLA flags for ``platform`` that this jaxlib accepts (none off CPU).

    Whether jaxlib accepts them is asked once per jaxlib version, by starting a
    Python process with them (XLA aborts on an unknown flag or value), and the answer
    kept in ``~/.cache/jax_iris/xla-flags.json``.
    """
    if check_platform(platform) != CPU:
        return []
    return [flag for flag in CPU_XLA_FLAGS if flag_accepted(flag)]


def flag_accepted(flag: str) -> bool:
    key = f"{_jaxlib_version()} {flag}"
    known = _read_probe_cache()
    if key not in known:
        known[key] = _probe((flag,))
        _write_probe_cache(known)
    return bool(known[key])


def flag_name(flag: str) -> str:
    """``--xla_name=value`` -> ``xla_name``."""
    return flag.strip().lstrip("-").partition("=")[0]


def apply_xla_flags(flags: Iterable[str]) -> list[str]:
    """Add ``flags`` to ``XLA_FLAGS``, except those whose name it already sets; returns
    the flags added. Refused (RuntimeError) once JAX has started a backend, since XLA
    reads the variable only then."""
    flags = list(flags)
    if flags and _backends_started():
        raise RuntimeError("XLA flags must be set before JAX starts its backends")
    current = os.environ.get("XLA_FLAGS", "")
    present = {flag_name(f) for f in current.split()}
    added = [f for f in flags if flag_name(f) not in present]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([*current.split(), *added])
    return added


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - JAX moved it: assume not yet
        return False
    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def _probe(flags: Sequence[str]) -> bool:
    """Whether a fresh process starts JAX's CPU backend with ``flags`` in XLA_FLAGS."""
    env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": CPU}
    try:
        done = subprocess.run(
            [sys.executable, "-c", "import jax; jax.devices()"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@functools.cache
def _jaxlib_version() -> str:
    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return "none"


def _probe_cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jax_iris" / PROBE_CACHE_NAME


def _read_probe_cache() -> dict[str, bool]:
    try:
        known = json.loads(_probe_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(known, dict):
        return {}
    return {k: v for k, v in known.items() if isinstance(k, str) and isinstance(v, bool)}


def _write_probe_cache(known: dict[str, bool]) -> None:
    """Best effort: a cache that cannot be written only means probing again next time."""
    path = _probe_cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(known, sort_keys=True))
        os.replace(temporary, path)
    except OSError:
        pass
