"""Running a command as several processes: the flags, their checks, and a watching parent.

``--coordinator HOST:PORT --num-processes N --process-id I`` on every process (or none,
under SLURM or Open MPI) joins them with ``jax.distributed``; a mistake is one line, exit 2,
before jax is imported. When the JAX runtime gives up (a peer died, no coordinator) it ends
the process with SIGABRT and a page of C++ log, past any Python handler. So the work runs in
a forked child whose C-level output goes to a log file (Python's ``sys.stdout`` and
``sys.stderr`` keep the terminal); the parent says in one line why the runtime ended it, and
the child dies with its parent. The sweep's store keeps every finished chunk, so a process
ended anywhere loses only the chunk it was training: nothing needs stopping gracefully.
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
from typing import NamedTuple, NoReturn

from jax_iris import distributed
from jax_iris.cli.common import EXIT_USAGE, UsageError, one_line, prog_name, run_main
from jax_iris.quote import clean, clean_path

KEPT = (  # what a sweep keeps when it stops early: the store holds every finished chunk
    "no outputs were written; finished chunks are kept in the store under --out, run the"
    " same command again to resume"
)
EXIT_LOST = 1  # the run stopped because another process died or stopped answering
MAX_CONNECT_TIMEOUT_S = 3600
# Measured here: a process that cannot reach the coordinator stops about 6 s after
# --connect-timeout (the runtime's last connection attempt), 1.5 s of it importing jax.
CONNECT_SLACK_S = 10
# After a peer dies: a process in a collective fails at once (closed connection); one
# computing learns it from the coordinator's heartbeat check within its heartbeat timeout
# and its polling (measured here: the timeout plus under 1 s).
LOST_SLACK_S = 5
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


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """``--coordinator``, ``--num-processes``, ``--process-id``, ``--connect-timeout``."""
    lost_s = distributed.HEARTBEAT_TIMEOUT_S + LOST_SLACK_S
    group = parser.add_argument_group(
        "several processes (jax.distributed)",
        "Run one job as N processes (e.g. one per machine), each given the same command and"
        " its own --process-id, or none of the three under SLURM (srun) or Open MPI (mpirun)."
        " Process 0 hosts the coordinator and alone writes --out. Without a coordinator a"
        f" process stops within --connect-timeout + {CONNECT_SLACK_S} s (exit 2); if one dies"
        f" the others stop within {lost_s} s (exit {EXIT_LOST}). Rerun to resume.",
    )
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="address of process 0, which listens on PORT (every process gives the same)",
    )
    group.add_argument("--num-processes", type=int, metavar="N", help="how many processes")
    group.add_argument("--process-id", type=int, metavar="I", help="this one's number, 0 to N-1")
    group.add_argument(
        "--connect-timeout",
        type=int,
        default=distributed.CONNECT_TIMEOUT_S,
        metavar="SECONDS",
        help="how long to wait for every process to connect (default: %(default)s)",
    )


def check_distributed_args(args: argparse.Namespace) -> Plan | None:
    """The plan for this process, or None for a single process; a bad flag (or, on process
    0, a PORT in use, or a jax too old for several processes) -> UsageError. Imports no jax."""
    try:
        plan = _plan(args)
        if plan is not None:
            distributed.check_jax_version()
    except distributed.DistributedError as err:
        raise UsageError(str(err)) from None
    return plan


def _plan(args: argparse.Namespace) -> Plan | None:
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
        env = distributed.detect_cluster()
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
    if n < 1:
        raise UsageError(f"--num-processes must be at least 1, got {n}")
    if not 0 <= i < n:
        raise UsageError(
            f"--process-id must be from 0 to {n - 1} with --num-processes {n}, got {i}"
        )
    port = parse_coordinator(args.coordinator)[1]
    if n == 1:
        return None
    if not hasattr(os, "fork"):
        raise UsageError("running as several processes needs a POSIX system (os.fork)")
    if i == 0:
        check_port_free(port)
    return Plan(args.coordinator, n, i, timeout, "flags")


def parse_coordinator(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6 address]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (sep and host and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise UsageError(
            f"--coordinator must be HOST:PORT with PORT from 1 to 65535"
            f" (e.g. 10.0.0.1:12345), got {clean(text, 120)!r}"
        )
    if any(c.isspace() or c in "/[]" for c in host) or ":" in host and "." in host:
        raise UsageError(f"--coordinator has a malformed host: {clean(text, 120)!r}")
    return host, int(port)


def check_port_free(port: int) -> None:
    """Process 0's coordinator listens on PORT on every interface: is it free here?"""
    dual = socket.has_dualstack_ipv6()  # as JAX's coordinator binds it: [::]:PORT
    try:
        socket.create_server(
            ("", port), family=socket.AF_INET6 if dual else socket.AF_INET, dualstack_ipv6=dual
        ).close()
    except OSError as err:
        raise UsageError(
            f"process 0 cannot listen on port {port} ({os.strerror(err.errno or 0)}); choose"
            " another --coordinator port"
        ) from None


def run_distributed(prog: str, plan: Plan | None, work: Callable[[], int]) -> int:
    """``work()`` in this process, or, for a distributed plan, in a child that first joins
    the others, watched by this process; returns the exit code."""
    if plan is None:
        return work()
    prog = prog_name(prog)
    log_fd, log = tempfile.mkstemp(prefix=f"jax_iris_process{plan.process_id}_", suffix=".log")
    # The child sends b"J" once it has joined and b"D" when its Python code is done, so
    # an exit without b"D" is the runtime's (jax 0.10 aborts, 0.8 exits with status 1).
    # The child's end reads EOF once the parent is gone.
    ours, theirs = socket.socketpair()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (runs in the child; the tests see it from outside)
        try:
            ours.close()
            _child(prog, plan, work, theirs, log_fd)
        except BaseException:  # a bug: show it, and never return into the parent's code
            traceback.print_exc()
            with contextlib.suppress(OSError):
                theirs.send(b"D")
        finally:
            os._exit(EXIT_LOST)
    os.close(log_fd)
    theirs.close()
    sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child has the terminal
    sigterm = signal.signal(signal.SIGTERM, lambda sig, _: _forward(pid, sig))
    try:
        status = os.waitpid(pid, 0)[1]
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if sigint is None else sigint)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if sigterm is None else sigterm)
    sent = b""
    with ours, contextlib.suppress(BlockingIOError):
        while chunk := ours.recv(16, socket.MSG_DONTWAIT):  # the child is gone: no wait
            sent += chunk
    code = os.waitstatus_to_exitcode(status)
    if code >= 0 and b"D" in sent:
        Path(log).unlink(missing_ok=True)
        return code
    return _report(prog, plan, -code if code < 0 else None, b"J" in sent, log)


def followers_stop(out: Path) -> bool:
    """After training, in a distributed run: every process but 0 prints where process 0
    writes the results and returns True (skip writing). A collective: all must call it."""
    import jax

    where = distributed.allgather_text(f"{socket.gethostname()}:{clean_path(out.resolve())}")[0]
    if jax.process_index() == 0:
        return False
    me = f"process {jax.process_index()} of {jax.process_count()}"
    print(f"{me}: done; process 0 writes the results to {where}")
    return True


def _forward(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, sig)


def _child(
    prog: str, plan: Plan, work: Callable[[], int], parent: socket.socket, log: int
) -> NoReturn:  # pragma: no cover
    """Join, work, leave; never returns. Python output keeps the terminal, C output the log."""
    sys.stdout = os.fdopen(os.dup(1), "w", buffering=1, errors="backslashreplace")
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1, errors="backslashreplace")
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    threading.Thread(target=_die_with_parent, args=(parent,), daemon=True).start()

    def body() -> int:
        given = plan.coordinator is not None  # else JAX reads all three from the launcher
        try:
            distributed.initialize(
                plan.coordinator,
                plan.num_processes if given else None,
                plan.process_id if given else None,
                plan.timeout,
            )
        except distributed.DistributedError as error:
            raise UsageError(str(error)) from None
        parent.send(b"J")
        try:
            return work()
        except distributed.DistributedError as error:  # a collective found a peer gone
            print(f"{prog}: error: {one_line(str(error))}; {KEPT}", file=sys.stderr)
            return EXIT_LOST

    code = run_main(prog, body)
    if code in (0, EXIT_USAGE):  # the others end too: wait for them (a no-op if not joined)
        import jax

        jax.distributed.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError):  # a parent gone: the lifeline thread ends this too
        parent.send(b"D")
    os._exit(code)


def _die_with_parent(parent: socket.socket) -> None:  # pragma: no cover
    with contextlib.suppress(OSError):
        while parent.recv(1):  # the parent sends nothing: b"" once it is gone
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def _report(prog: str, plan: Plan, signum: int | None, joined: bool, log: str) -> int:
    """One line on stderr for a child that the runtime (or a signal) ended; the exit code.

    ``signum`` None: it exited, but not from its Python code (the runtime ended it)."""
    me = f"process {plan.process_id} of {plan.num_processes}"
    where = clean(plan.coordinator, 120) if plan.coordinator else f"{plan.source}'s address"
    if signum is not None and signum not in _RUNTIME_ENDINGS:
        code, text = 128 + signum, f"{me} was stopped by signal {signum}; {KEPT}"
    elif joined:
        code, text = EXIT_LOST, f"{me} stopped: another process died or stopped answering; {KEPT}"
    else:
        code = EXIT_USAGE
        text = (
            f"cannot reach the coordinator at {where}, or not all {plan.num_processes} processes"
            f" connected within {plan.timeout} s; start every process with the same --coordinator"
            " and --num-processes (or raise --connect-timeout)"
        )
    print(f"{prog}: error: {one_line(text)} (JAX runtime log: {clean_path(log)})", file=sys.stderr)
    return code
