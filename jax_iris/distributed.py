"""Several processes, one sweep: JAX's multi-controller runtime (``jax.distributed``).

Every process runs the same program. ``initialize`` joins them into one runtime, so that
``jax.devices()`` lists every process's devices. Each process trains its own devices'
share of every chunk (``jax_iris.sweep``), ``allgather`` brings the chunk's results to
every process, and process 0 alone stores them and writes the outputs. ``allgather_text``
carries what the processes compare or share: the sweep, the stored chunks, where outputs go.
Only the functions import jax, so command-line checks that use the module answer first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import metadata
from typing import Any, NamedTuple

import numpy as np

# A process whose heartbeats (sent by a runtime thread, so a busy process sends them too)
# stop for this long counts as dead, and the runtime stops the others. JAX's default: 100 s.
HEARTBEAT_TIMEOUT_S = 30
SHUTDOWN_TIMEOUT_S = 120  # the end's barrier waits this long for process 0's writes (JAX: 300)
CONNECT_TIMEOUT_S = 60  # how long a process waits for all to join (JAX: 300)
# jax 0.8.1, the floor for everything else, lacks ``jax_enable_preemption_service``.
MIN_JAX = (0, 8, 2)


class DistributedError(Exception):
    """The processes could not start or finish together; the message is one line."""


class ClusterEnv(NamedTuple):
    """A launcher that tells JAX the processes by itself (``jax.distributed.initialize()``)."""

    name: str  # "SLURM" or "Open MPI"
    num_processes: int
    process_id: int


# The launchers in the order jax.distributed tries them: the variables whose presence makes
# it detect one, then those holding the number of processes and this process's rank.
_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_LAUNCHERS = (
    ("Open MPI", ("OMPI_MCA_orte_hnp_uri",), "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    ("SLURM", _SLURM, "SLURM_NTASKS", "SLURM_PROCID"),
)


def detect_cluster(environ: Mapping[str, str] | None = None) -> ClusterEnv | None:
    """The SLURM step or Open MPI job this process runs in, if any (no jax import)."""
    environ = os.environ if environ is None else environ
    for name, markers, count, rank in _LAUNCHERS:
        if all(variable in environ for variable in markers):
            try:
                return ClusterEnv(name, int(environ[count]), int(environ[rank]))
            except (KeyError, ValueError):
                raise DistributedError(
                    f"{name} was detected but ${count} and ${rank} are not both integers"
                ) from None
    return None


def check_jax_version() -> None:
    """DistributedError unless the installed jax and jaxlib are ``MIN_JAX`` or newer.

    Asks the installed metadata, so it imports no jax."""
    for name in ("jax", "jaxlib"):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # not installed: importing it fails with its own message
        numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:3])
        if numbers < MIN_JAX:
            floor = ".".join(map(str, MIN_JAX))
            raise DistributedError(
                f"a sweep over several processes needs jax and jaxlib {floor} or newer, this"
                f" is {name} {version}: pip install 'jax>={floor}' 'jaxlib>={floor}'"
            )


def initialize(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    timeout: int = CONNECT_TIMEOUT_S,
) -> None:
    """Join the other processes (``jax.distributed.initialize``) before any other jax call.

    ``coordinator`` is process 0's ``HOST:PORT``; ``None`` for all three lets JAX read
    them from SLURM or Open MPI. Collectives on CPU use gloo. The runtime ends the process
    itself (SIGABRT) when a peer stops answering or ``timeout`` s pass before all join.
    """
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # The preemption service turns SIGTERM into a notice for programs that save at
    # sync points; the store keeps every finished chunk, so SIGTERM (scancel, kill)
    # should end the process as usual instead of being held while the sweep runs on.
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


def allgather_text(text: str, size: int = 4096) -> list[str]:
    """Each process's ``text`` (its first ``size`` UTF-8 bytes) on every process, in order."""
    raw = text.encode("utf-8", "backslashreplace")[:size]
    buffer = np.zeros(size, np.uint8)
    buffer[: len(raw)] = np.frombuffer(raw, np.uint8)
    lengths, buffers = allgather((np.int32(len(raw)), buffer), tiled=False)
    return [bytes(b[:n]).decode("utf-8", "replace") for n, b in zip(lengths, buffers)]


def allgather(tree: Any, tiled: bool) -> Any:
    """Every process's pytree of numpy arrays (same shapes everywhere), each leaf stacked
    (or, ``tiled``, concatenated) over the processes in order; a lost peer raises
    ``DistributedError``. Local parts concatenated in ``jax.devices()`` order come back
    concatenated in that order over every device."""
    import jax
    from jax.experimental import multihost_utils

    try:
        gathered = multihost_utils.process_allgather(tree, tiled=tiled)
    except jax.errors.JaxRuntimeError as err:
        raise DistributedError(
            f"process {jax.process_index()} of {jax.process_count()} lost contact with"
            f" another process ({_first_line(err)})"
        ) from None
    return jax.tree_util.tree_map(np.asarray, gathered)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__
