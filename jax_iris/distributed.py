"""Several processes, one sweep: JAX's multi-controller runtime (``jax.distributed``).

Every process runs the same program. ``initialize`` joins them into one runtime, so
that ``jax.devices()`` lists every process's devices and one mesh spans them all.
Each process builds only the inputs of the nets that sit on its own devices
(``local_rows``, ``place``), every process runs the same compiled sweep on its
shards, and ``gather`` brings the results to every process.

This module imports jax only inside its functions, so command-line checks that
use it answer before jax loads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

# A process whose heartbeats stop for this long counts as dead and the runtime stops
# the others (JAX's default is 100 s). Heartbeats come from a runtime thread, so a
# busy process still sends them.
HEARTBEAT_TIMEOUT_S = 30
# At exit every process waits for the others at a barrier: the leader may still be
# writing the outputs. JAX's default is 300 s.
SHUTDOWN_TIMEOUT_S = 120
# How long a process waits for every process to join (JAX's default is 300 s).
CONNECT_TIMEOUT_S = 60


class DistributedError(Exception):
    """The processes could not start or finish together; the message is one line."""


class ClusterEnv(NamedTuple):
    """A launcher that tells JAX the processes by itself (``jax.distributed.initialize()``)."""

    name: str  # "SLURM" or "Open MPI"
    num_processes: int
    process_id: int


# The variables whose presence makes jax.distributed detect the launcher, as JAX checks them.
_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_OMPI = "OMPI_MCA_orte_hnp_uri"


def detect_cluster(environ: Mapping[str, str] | None = None) -> ClusterEnv | None:
    """The SLURM step or Open MPI job this process runs in, if any (no jax import)."""
    environ = os.environ if environ is None else environ
    found = None
    if all(name in environ for name in _SLURM):
        found = ("SLURM", "SLURM_NTASKS", "SLURM_PROCID")
    elif _OMPI in environ:
        found = ("Open MPI", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")
    if found is None:
        return None
    name, count, rank = found
    try:
        return ClusterEnv(name, int(environ[count]), int(environ[rank]))
    except (KeyError, ValueError):
        raise DistributedError(
            f"{name} was detected but ${count} and ${rank} are not both integers"
        ) from None


def initialize(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    timeout: int = CONNECT_TIMEOUT_S,
) -> None:
    """Join the other processes (``jax.distributed.initialize``) before any other jax call.

    ``coordinator`` is process 0's ``HOST:PORT``; ``None`` for all three lets JAX
    read them from SLURM or Open MPI. Every process waits up to ``timeout`` seconds
    for all to connect. Cross-process collectives on CPU use gloo. Note that the
    runtime ends the process itself (SIGABRT, log on stderr) when a peer stops
    answering or the connection times out: a supervisor is needed to report that
    in one line (``jax_iris.cli.distributed``).
    """
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # The preemption service turns SIGTERM into a notice for programs that save at
    # sync points; a sweep saves nothing midway, so SIGTERM (scancel, kill) should end
    # the process as usual instead of being held while the sweep runs on.
    jax.config.update("jax_enable_preemption_service", False)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout,
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
            shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
        )
    except (RuntimeError, ValueError, TypeError) as err:
        raise DistributedError(f"cannot start jax.distributed: {_first_line(err)}") from None


def shutdown() -> None:
    """Leave the runtime: waits (up to ``SHUTDOWN_TIMEOUT_S``) for every other process."""
    import jax

    jax.distributed.shutdown()


def process_index() -> int:
    import jax

    return jax.process_index()


def process_count() -> int:
    import jax

    return jax.process_count()


def is_leader() -> bool:
    """Process 0: the one that writes the outputs."""
    return process_index() == 0


def gather_parts(parts: list[Any]) -> list[Any]:
    """Every process's ``parts`` (one pytree of numpy arrays per local device, in its
    ``jax.devices()`` order), as one list on every process, process 0's first.

    ``multihost_utils.process_allgather`` stacks each leaf over processes; every
    process holds as many devices and leaves of the same shapes. A process that died
    during the gather becomes a ``DistributedError``.
    """
    import jax
    from jax.experimental import multihost_utils

    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *parts)
    try:
        everyone = multihost_utils.process_allgather(stacked, tiled=False)
    except jax.errors.JaxRuntimeError as err:
        raise DistributedError(
            f"process {jax.process_index()} of {jax.process_count()} lost contact with"
            f" another process while gathering results ({_first_line(err)})"
        ) from None
    everyone = jax.tree_util.tree_map(np.asarray, everyone)
    return [
        jax.tree_util.tree_map(lambda a, p=p, d=d: a[p, d], everyone)
        for p in range(jax.process_count())
        for d in range(len(parts))
    ]


def allgather_bytes(data: bytes, size: int = 64) -> list[bytes]:
    """Each process's ``data`` (at most ``size`` bytes) on every process, in process order."""
    import jax
    from jax.experimental import multihost_utils

    buffer = np.zeros(size + 1, np.uint8)
    buffer[0] = len(data[:size])
    buffer[1 : 1 + buffer[0]] = np.frombuffer(data[:size], np.uint8)
    try:
        got = np.asarray(multihost_utils.process_allgather(buffer, tiled=False))
    except jax.errors.JaxRuntimeError as err:
        raise DistributedError(f"lost contact with another process ({_first_line(err)})") from None
    return [bytes(row[1 : 1 + row[0]]) for row in got]


def broadcast_text(text: str, size: int = 4096) -> str:
    """Process 0's ``text`` (its first ``size`` UTF-8 bytes) on every process."""
    import jax
    from jax.experimental import multihost_utils

    data = np.zeros(size + 1, np.uint8)  # the last byte holds nothing: text ends in a zero
    raw = text.encode("utf-8", "backslashreplace")[:size]
    data[: len(raw)] = np.frombuffer(raw, np.uint8)
    try:
        got = np.asarray(multihost_utils.broadcast_one_to_all(data))
    except jax.errors.JaxRuntimeError as err:
        raise DistributedError(f"lost contact with process 0 ({_first_line(err)})") from None
    return bytes(got[: int(np.argmin(got))]).decode("utf-8", "replace")


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__
