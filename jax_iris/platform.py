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
- ``use_default_xla_flags()``: the one place they are set, called when
  ``jax_iris.models`` is imported (every module that trains imports it): every command,
  every script and every Python user who imports it before running anything in JAX
  trains under the same flags, so a net's numbers do not depend on how it was started.
  ``numeric_xla_flags()`` is what a sweep records.
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
# Measured on XLA:CPU (jax 0.10.2, 2 cores, benchmarks/fused_bench.py): the fused sweep of
# 1000 attention nets x 1000 epochs takes 10.55 s with them against 13.95 s without (39
# kernels an epoch against 49).
# They change float32 rounding (softmax sums, max), so they are set for every user alike.
CPU_XLA_FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type=-reduce",
    "--xla_cpu_enable_fast_min_max=true",
)
OPT_OUT_VARIABLE = "JAX_IRIS_XLA_FLAGS"  # "none": leave XLA_FLAGS as it is
PROBE_TIMEOUT_S = 120
PROBE_CACHE_NAME = "xla-flags.json"  # {"<jaxlib version> <flags>": accepted}
# A jax.config option that JAX refuses to change once a backend runs (see _backends_started).
PROBE_OPTION = "jax_cpu_get_local_topology_timeout_minutes"


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


def use_default_xla_flags() -> list[str]:
    """Add this platform's XLA flags (``CPU_XLA_FLAGS``, those this jaxlib accepts) to
    ``XLA_FLAGS``, unless JAX has already started its backends (then nothing: the
    process runs as it started, and ``numeric_xla_flags`` says so). A flag the user set
    in ``XLA_FLAGS`` is kept as the user set it, ``=false`` included. Returns the flags
    added. Accelerators ignore CPU flags, so they are added on every machine.
    ``JAX_IRIS_XLA_FLAGS=none`` in the environment adds none (XLA's own defaults)."""
    if os.environ.get(OPT_OUT_VARIABLE, "").strip().lower() == "none" or _backends_started():
        return []
    return apply_xla_flags(xla_flags(CPU))


def numeric_xla_flags() -> list[str]:
    """The flags in ``XLA_FLAGS`` that can change results: all of them but the host
    device count (a net's numbers do not depend on it) and dump options, sorted."""
    ignored = ("xla_force_host_platform_device_count", "xla_dump")
    flags = os.environ.get("XLA_FLAGS", "").split()
    return sorted(f for f in flags if not flag_name(f).startswith(ignored))


def _backends_started() -> bool:
    """Whether JAX has started a backend in this process (XLA has read ``XLA_FLAGS``).

    JAX has no public question for this that does not start one: ``jax.extend.backend``
    and ``jax.config`` offer none, in jax 0.8.1 as in 0.10.2, and its own answer is private
    (``jax._src.xla_bridge.backends_are_initialized``). What it does make public is the
    rule that some ``jax.config`` options must be set before the backends start:
    ``jax.config.update`` refuses a new value for them with RuntimeError once one runs.
    Asking that of ``PROBE_OPTION`` answers without private names, and a value that was
    taken is set back at once. That option is read only while a multi-process CPU
    backend gathers its topology, so even a backend that another thread starts between
    the two updates is not changed by it. ``tests/test_platform.py`` pins both answers.
    """
    if "jax" not in sys.modules:
        return False
    import jax

    try:
        value = getattr(jax.config, PROBE_OPTION)
        jax.config.update(PROBE_OPTION, value + 1)
    except RuntimeError:
        return True
    except AttributeError:  # pragma: no cover - a JAX without the option: assume not yet
        return False
    jax.config.update(PROBE_OPTION, value)
    return False


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
    """Best effort, and plainly written (the one atomic writer, ``jax_iris.io.fileio``, sits
    above this module): a cache that is missing, torn or not written only means probing
    again, since ``_read_probe_cache`` reads anything but a complete one as empty."""
    path = _probe_cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, sort_keys=True))
    except OSError:
        pass
