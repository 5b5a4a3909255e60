"""Running a command as several processes: the flags, their checks, and a supervisor.

``--coordinator HOST:PORT --num-processes N --process-id I`` on every process (or
nothing, under SLURM or Open MPI) joins them with ``jax.distributed``. Mistakes are
one line and exit 2 before jax is imported.

When the JAX runtime gives up (a peer died, the coordinator never answered) it
ends the process itself with SIGABRT and a page of C++ log, which no Python
handler can catch. So a process of a distributed run forks: the child does the
work with the runtime's own output (C-level stdout and stderr) sent to a pipe,
while Python's ``sys.stdout``/``sys.stderr`` keep the terminal; the parent waits
and, if the runtime ended the child, says why in one line (the log goes to a file
named in that line). A child whose parent is killed kills itself, so the others
see it die.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from jax_iris.cli.common import EXIT_USAGE, UsageError, one_line, run_main
from jax_iris.distributed import (
    CONNECT_TIMEOUT_S,
    HEARTBEAT_TIMEOUT_S,
    DistributedError,
    detect_cluster,
)
from jax_iris.quote import clean, clean_path

# What a sweep keeps when a peer dies: the results store holds every finished chunk.
KEPT = (
    "no outputs were written; finished chunks are kept in the store under --out, run the"
    " same command again to resume"
)
EXIT_LOST = 1  # the run stopped because another process died or stopped answering
MAX_PROCESSES = 100_000
MAX_CONNECT_TIMEOUT_S = 3600
# Measured here: a process that cannot reach the coordinator stops about 6 s after
# --connect-timeout (the runtime's last connection attempt), 1.5 s of it importing jax.
CONNECT_SLACK_S = 10
# After a peer dies: a process in a collective fails at once (closed connection); one
# computing learns it from the coordinator's heartbeat check, within HEARTBEAT_TIMEOUT_S
# and its polling (measured here: the timeout plus under 1 s).
LOST_SLACK_S = 5
_LOG_KEEP = 1 << 20  # bytes of the runtime's log kept for a failure report
# How the runtime ends a process: abort() after a fatal log line; a crash when the
# coordinator cannot listen (measured: SIGSEGV for a port in use).
_RUNTIME_ENDINGS = (signal.SIGABRT, signal.SIGSEGV)


class Plan(NamedTuple):
    """How this process joins the others."""

    coordinator: str | None  # HOST:PORT of process 0; None: JAX reads it from the launcher
    num_processes: int
    process_id: int
    timeout: int  # seconds to wait for every process to connect
    source: str  # "flags", "SLURM" or "Open MPI"

    @property
    def where(self) -> str:
        """The coordinator's address for a message."""
        return clean(self.coordinator, 120) if self.coordinator else f"{self.source}'s address"


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """``--coordinator``, ``--num-processes``, ``--process-id``, ``--connect-timeout``."""
    group = parser.add_argument_group(
        "several processes (jax.distributed)",
        "Run one job as N processes, e.g. one per machine: every process gets the same"
        " command with its own --process-id; under SLURM (srun) or Open MPI (mpirun) give"
        " none of the three, JAX reads them from the launcher. Process 0 hosts the"
        " coordinator and alone writes --out. A process that cannot reach the coordinator"
        f" stops within --connect-timeout + {CONNECT_SLACK_S} s (exit 2); once running,"
        " if one process dies the others stop within"
        f" {HEARTBEAT_TIMEOUT_S + LOST_SLACK_S} s (exit {EXIT_LOST}), one line each,"
        " no outputs written (a sweep keeps its finished chunks: rerun to resume).",
    )
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="address of process 0, which listens on PORT (every process gives the same)",
    )
    group.add_argument(
        "--num-processes", type=int, metavar="N", help="how many processes take part"
    )
    group.add_argument(
        "--process-id", type=int, metavar="I", help="this process's number, 0 to N-1"
    )
    group.add_argument(
        "--connect-timeout",
        type=int,
        default=CONNECT_TIMEOUT_S,
        metavar="SECONDS",
        help="how long to wait for every process to connect (default: %(default)s)",
    )


def check_distributed_args(args: argparse.Namespace) -> Plan | None:
    """The plan for this process, or None for a single process; a bad flag -> UsageError.

    Checks the flags, that HOST resolves, and (on process 0) that PORT is free,
    without importing jax.
    """
    timeout = args.connect_timeout
    if not 1 <= timeout <= MAX_CONNECT_TIMEOUT_S:
        raise UsageError(
            f"--connect-timeout must be from 1 to {MAX_CONNECT_TIMEOUT_S} seconds, got {timeout}"
        )
    flags = {
        "--coordinator": args.coordinator,
        "--num-processes": args.num_processes,
        "--process-id": args.process_id,
    }
    given = [flag for flag, value in flags.items() if value is not None]
    if not given:
        try:
            env = detect_cluster()
        except DistributedError as err:
            raise UsageError(str(err)) from None
        if env is None or env.num_processes <= 1:
            return None
        return Plan(None, env.num_processes, env.process_id, timeout, env.name)
    if len(given) < len(flags):
        missing = [flag for flag in flags if flag not in given]
        raise UsageError(
            f"{' and '.join(given)} without {' and '.join(missing)}: give --coordinator"
            " HOST:PORT, --num-processes N and --process-id I together (or none of them"
            " under SLURM or Open MPI)"
        )
    n, i = args.num_processes, args.process_id
    if not 1 <= n <= MAX_PROCESSES:
        raise UsageError(f"--num-processes must be from 1 to {MAX_PROCESSES:,}, got {n}")
    if not 0 <= i < n:
        raise UsageError(
            f"--process-id must be from 0 to {n - 1} with --num-processes {n}, got {i}"
        )
    host, port = parse_coordinator(args.coordinator)
    if n == 1:
        return None
    if not hasattr(os, "fork"):
        raise UsageError("running as several processes needs a POSIX system (os.fork)")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise UsageError(
            f"cannot resolve the host of --coordinator {clean(args.coordinator, 120)}"
            f" ({err.strerror or err})"
        ) from None
    if i == 0:
        check_port_free(port)
    return Plan(args.coordinator, n, i, timeout, "flags")


def parse_coordinator(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6 address]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if (
        not sep
        or not host
        or not (port.isascii() and port.isdigit())
        or not 1 <= int(port) <= 65535
    ):
        raise UsageError(
            f"--coordinator must be HOST:PORT with PORT from 1 to 65535"
            f" (e.g. 10.0.0.1:12345), got {clean(text, 120)!r}"
        )
    if any(c.isspace() or c in "/[]" for c in host) or ":" in host and "." in host:
        raise UsageError(f"--coordinator has a malformed host: {clean(text, 120)!r}")
    return host, int(port)


def check_port_free(port: int) -> None:
    """Process 0's coordinator listens on PORT on every interface: is it free here?"""
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here: try IPv4
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
            return
        except OSError as err:
            raise UsageError(
                f"process 0 cannot listen on port {port} ({err.strerror or err}); choose"
                " another --coordinator port"
            ) from None
        finally:
            probe.close()


def run_distributed(prog: str, plan: Plan | None, work: Callable[[], int]) -> int:
    """``work()`` in this process, or, for a distributed plan, in a supervised child
    that first joins the others; returns the exit code."""
    if plan is None:
        return work()
    return _supervise(prog, plan, work)


def followers_stop(out: Path) -> bool:
    """After training, in a distributed run: every process but 0 prints where process 0
    writes the results and returns True (skip writing). A collective: all must call it."""
    from jax_iris import distributed

    count = distributed.process_count()
    if count == 1:
        return False
    where = distributed.broadcast_text(f"{socket.gethostname()}:{clean_path(out.resolve())}")
    if distributed.is_leader():
        return False
    print(
        f"process {distributed.process_index()} of {count}: done; process 0 writes the"
        f" results to {where}"
    )
    return True


def _supervise(prog: str, plan: Plan, work: Callable[[], int]) -> int:
    lifeline_r, lifeline_w = os.pipe()  # closes when the parent dies, however it dies
    status_r, status_w = os.pipe()  # the child writes b"J" once it has joined
    log_r, log_w = os.pipe()  # the runtime's C-level output
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (runs in the child; the tests see it from outside)
        try:
            os.close(lifeline_w)
            os.close(status_r)
            os.close(log_r)
            _child(prog, plan, work, lifeline_r, status_w, log_w)
        except BaseException:  # a bug: show it, and never return into the parent's code
            traceback.print_exc()
        finally:
            os._exit(EXIT_LOST)
    for fd in (lifeline_r, status_w, log_w):
        os.close(fd)
    log = bytearray()
    reader = threading.Thread(target=_drain, args=(log_r, log), daemon=True)
    reader.start()
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),  # the child has the tty
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda sig, _: _forward(pid, sig)),
    }
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        os.close(lifeline_w)
    reader.join(timeout=5)
    joined = os.read(status_r, 1) == b"J"
    os.close(status_r)
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return code
    return _report(prog, plan, -code, joined, bytes(log))


def _forward(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, sig)


def _child(
    prog: str, plan: Plan, work: Callable[[], int], lifeline: int, status: int, log: int
) -> None:  # pragma: no cover
    """Join, work, leave; never returns. Python output keeps the terminal, C output the pipe."""
    out = os.fdopen(os.dup(1), "w", buffering=1, errors="backslashreplace")
    err = os.fdopen(os.dup(2), "w", buffering=1, errors="backslashreplace")
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout, sys.stderr = out, err
    threading.Thread(target=_die_with_parent, args=(lifeline,), daemon=True).start()
    lost = False

    def body() -> int:
        nonlocal lost
        from jax_iris import distributed

        try:
            distributed.initialize(
                plan.coordinator,
                plan.num_processes if plan.coordinator else None,
                plan.process_id if plan.coordinator else None,
                plan.timeout,
            )
        except DistributedError as error:
            raise UsageError(str(error)) from None
        os.write(status, b"J")
        import jax

        try:
            return work()
        except (DistributedError, jax.errors.JaxRuntimeError) as error:
            lost = True
            text = str(error) if isinstance(error, DistributedError) else _lost(plan, error)
            print(f"{prog}: error: {one_line(text)}; {KEPT}", file=sys.stderr)
            return EXIT_LOST

    code = run_main(prog, body)
    if code in (0, EXIT_USAGE) and not lost:
        from jax_iris import distributed

        distributed.shutdown()  # waits for the others (a no-op if it never joined)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _lost(plan: Plan, error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    return (
        f"process {plan.process_id} of {plan.num_processes} lost contact with another"
        f" process ({first})"
    )


def _die_with_parent(lifeline: int) -> None:  # pragma: no cover
    while True:
        try:
            if os.read(lifeline, 1) == b"":
                break
        except InterruptedError:
            continue
        except OSError:
            break
    os.kill(os.getpid(), signal.SIGKILL)


def _drain(fd: int, into: bytearray) -> None:
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            into += chunk
            del into[:-_LOG_KEEP]


def _report(prog: str, plan: Plan, signum: int, joined: bool, log: bytes) -> int:
    """One line on stderr for a child that the runtime (or a signal) ended; the exit code."""
    saved = _save_log(plan, log) if log else None
    tail = f" (JAX runtime log: {clean_path(saved)})" if saved else ""
    me = f"process {plan.process_id} of {plan.num_processes}"
    if signum not in _RUNTIME_ENDINGS:
        name = signal.Signals(signum).name if signum in signal.valid_signals() else signum
        code, text = 128 + signum, f"{me} was stopped by signal {name}"
    elif joined:
        code, text = (
            EXIT_LOST,
            (f"{me} stopped: another process died or stopped answering ({_reason(log)}); {KEPT}"),
        )
    elif plan.process_id == 0:
        code, text = (
            EXIT_USAGE,
            (
                f"{me}: the coordinator at {plan.where} did not start, or not every process"
                f" connected within {plan.timeout} s; start all {plan.num_processes} with the"
                " same --coordinator and --num-processes (or raise --connect-timeout)"
            ),
        )
    else:
        code, text = (
            EXIT_USAGE,
            (
                f"cannot reach the coordinator at {plan.where} within {plan.timeout} s; is"
                " process 0 running, with the same --num-processes and --coordinator?"
            ),
        )
    print(f"{prog}: error: {one_line(text + tail)}", file=sys.stderr, flush=True)
    return code


def _reason(log: bytes) -> str:
    text = log.decode("utf-8", "replace")
    for needle, reason in (
        ("heartbeat timeout", "its heartbeats stopped"),
        ("stopped sending heartbeats", "its heartbeats stopped"),
        ("Socket closed", "the coordinator's connection closed"),
        ("Connection closed by peer", "a connection closed"),
        ("Shutdown barrier has failed", "the others did not reach the end"),
    ):
        if needle in text:
            return reason
    return "the runtime ended this process"


def _save_log(plan: Plan, log: bytes) -> Path | None:
    try:
        fd, name = tempfile.mkstemp(prefix=f"jax_iris_process{plan.process_id}_", suffix=".log")
        with os.fdopen(fd, "wb") as f:
            f.write(log)
    except OSError:
        return None
    return Path(name)
