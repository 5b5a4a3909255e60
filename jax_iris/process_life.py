"""One owner of a command's process life: stop signals, the standard streams, the exit status.

``install()`` runs first in every entry point (``scripts/*.py``, ``jax-iris``,
``python -m jax_iris``), before numpy or jax is imported, so no command can forget a
case. It imports nothing but the standard library.

Stop signals: SIGINT (Ctrl-C), SIGTERM (``kill``, ``timeout``, schedulers) and SIGHUP
(a closed terminal) are handled alike; a signal already ignored (``nohup``, a
background job) stays ignored. A stop signal is only recorded while the command
starts (until ``run_main`` begins), while a module is being imported (a half-run
import leaves numpy or jaxlib broken: ImportError or a crash later) and inside
``held()`` blocks (``fileio.commit``'s renames); it takes effect as soon as the block
ends. Elsewhere it raises ``Stopped``, a ``KeyboardInterrupt``, so every
``except KeyboardInterrupt`` treats SIGTERM as Ctrl-C. A ``Stopped`` that Python would
swallow (raised inside a gc callback, ``__del__`` or a weakref callback: "Exception
ignored in ...") is delivered again a moment later instead; one that a library catches
and drops (a bare ``except: pass``) is raised again ``LOST_AFTER_S`` later, and one it
replaces with an error of its own is the stop all the same (``is_stop``). The exit status is
128 + the signal number, as a shell reports it: 130 for SIGINT, 143 for SIGTERM,
129 for SIGHUP.

Streams: a closed stdin, stdout or stderr (``>&-``) is reopened on /dev/null before
anything else opens a file (else the first file opened would take its number and
receive the output), and stdout and stderr never raise: a broken pipe or a full disk
(ENOSPC) drops the output, with one line on stderr for stdout's ENOSPC, and the run
and its files go on.
"""

from __future__ import annotations

import _thread
import builtins
import contextlib
import errno
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
REDELIVER_AFTER_S = 0.005  # a swallowed stop is raised again this long after, off the gc path
# A stop signal while the last one is still being acted on is ignored, unless that one
# seems lost (caught by some library) this long after: then it is raised again.
RESTOP_AFTER_S = 1.0
# A delivered stop that no handler has taken this long after was swallowed by a library
# (a bare ``except: pass``): it is raised again, so that a single SIGTERM is never lost.
LOST_AFTER_S = 2.0
_WORDS = {"SIGINT": "interrupted"}  # how a command's line names the stop; others by name

_installed = False
_running = 0  # depth of run_main: stops are raised only inside it
_holds = 0  # depth of held() blocks and imports on the main thread
_pending: int | None = None  # a stop recorded while held, raised when the hold ends
_received: int | None = None  # the first stop signal this process received
_delivered_at: float | None = None  # when a Stopped was last raised (monotonic seconds)
_taken = False  # the delivered stop reached code that acts on it (``is_stop``)
_original_import = builtins.__import__
_previous_unraisablehook = sys.unraisablehook


class Stopped(KeyboardInterrupt):
    """A stop signal, raised where the command can stop (``KeyboardInterrupt`` for SIGINT
    and SIGTERM alike). ``written`` is True when it waited for a commit to finish."""

    def __init__(self, signum: int, written: bool = False) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.written = written


def exit_status(signum: int | None) -> int:
    """128 + the signal number, as a shell reports a process stopped by it."""
    return 128 + int(signum if signum is not None else signal.SIGINT)


def describe(signum: int | None) -> str:
    """``interrupted`` for Ctrl-C, ``stopped by SIGTERM`` (or SIGHUP) otherwise."""
    name = signal.Signals(signum if signum is not None else signal.SIGINT).name
    return _WORDS.get(name, f"stopped by {name}")


def received() -> int | None:
    """The first stop signal received, or None."""
    return _received


def is_stop(err: BaseException) -> bool:
    """Whether ``err`` is a stop signal's doing: a ``KeyboardInterrupt``, or any error
    raised inside the command after a ``Stopped`` was delivered. Some libraries catch
    everything and raise an error of their own in its place (JAX 0.8's primitive binding
    has a bare ``except:``: "couldn't apply typeof to args"), so a stop must not depend
    on the ``Stopped`` itself arriving. A True answer takes the stop: the caller acts on
    it, and it is not raised again."""
    global _taken
    stop = isinstance(err, KeyboardInterrupt) or (
        isinstance(err, Exception) and _running > 0 and _delivered_at is not None
    )
    _taken = _taken or stop
    return stop


def installed() -> bool:
    return _installed


def install() -> None:
    """Take over process life for a command; idempotent. Call before heavy imports."""
    global _installed
    if _installed:
        return
    _installed = True
    _reopen_closed_std_fds()
    sys.stdout = SafeStream.wrap(sys.stdout, 1, "stdout")
    sys.stderr = SafeStream.wrap(sys.stderr, 2, "stderr")
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)
    builtins.__import__ = _import
    sys.unraisablehook = _unraisablehook
    # A signal sent while the process was being created (blocked by the parent) is
    # delivered now, to the handler above, instead of never.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def install_for(module_name: str) -> None:
    """``install()`` when called from a script run as a program (``__name__`` is main)."""
    if module_name == "__main__":
        install()


def begin() -> None:
    """The command's work starts (``run_main``): a stop recorded during start-up is raised."""
    global _running, _delivered_at
    if _running == 0:
        _delivered_at = None  # a stop of an earlier command in this process is over
    _running += 1
    if _installed and _pending is not None and not _holds:
        _raise_pending()


def end() -> None:
    """The command's work is over; later stop signals change nothing."""
    global _running
    _running = max(0, _running - 1)


def exit(code: int) -> None:  # noqa: A001 - the process's exit, as sys.exit
    """End the process with ``code``, once stdout and stderr are flushed.

    After a stop signal the process ends at once (``os._exit``): nothing is left to
    write, and the interpreter's shutdown is where an interrupted runtime could crash.
    Otherwise stop signals are ignored from here on: the command's outcome stands.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if _received is not None:
        os._exit(code)
    # The outcome is decided: a stop signal from here on changes nothing (the
    # interpreter's shutdown would otherwise restore the default action, death by it).
    for signum in STOP_SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, signal.SIG_IGN)
    sys.exit(code)


@contextlib.contextmanager
def held() -> Iterator[list[int]]:
    """Stop signals arriving inside the block wait for its end; they are listed in the
    yielded list so that the caller raises ``Stopped`` once its work is consistent.

    Off the main thread it is a no-op (handlers run on the main thread only). Without
    ``install()`` (the package used as a library) handlers that only record are set
    for the block, the previous ones restored after.
    """
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    global _holds, _pending
    if _installed:
        _holds += 1
        try:
            yield caught
        finally:
            _holds -= 1
            if _pending is not None and _holds == 0 and _running:
                caught.append(_pending)
                _pending = None
        return
    previous = {}
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if current not in (signal.SIG_IGN, None):
            previous[signum] = signal.signal(signum, lambda s, _frame: caught.append(s))
    try:
        yield caught
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_now(caught: list[int], written: bool) -> None:
    """Raise ``Stopped`` for the first signal ``held()`` caught, if any.

    A signal whose previous handler is the system default (SIGTERM in a library
    process) is re-sent, so that it ends the process as it would have.
    """
    if not caught:
        return
    signum = caught[0]
    if not _installed and signal.getsignal(signum) is signal.SIG_DFL:
        signal.raise_signal(signum)
    _note_received(signum)
    global _delivered_at
    _delivered_at = time.monotonic()
    raise Stopped(signum, written=written)


# ---------------------------------------------------------------- internals


def _note_received(signum: int) -> None:
    global _received
    if _received is None:
        _received = signum


def _on_signal(signum: int, frame: Any) -> None:
    global _pending
    _note_received(signum)
    if _delivered_at is not None and time.monotonic() - _delivered_at < RESTOP_AFTER_S:
        return  # already stopping: a second Ctrl-C must not interrupt the clean-up
    if not _running or _holds or _swallowed_here(frame):
        if _pending is None:
            _pending = signum
        if _running and not _holds:
            _redeliver(signum)
        return
    _pending = None
    _raise(signum)


def _raise_pending() -> None:
    global _pending
    signum, _pending = _pending, None
    if signum is not None:
        _raise(signum)


def _raise(signum: int) -> None:
    global _delivered_at, _taken
    _delivered_at, _taken = time.monotonic(), False
    _watch(signum, _delivered_at)
    raise Stopped(signum)


def _watch(signum: int, delivered_at: float) -> None:
    """Raise the stop again if nothing has taken it ``LOST_AFTER_S`` after its delivery."""

    def later() -> None:
        global _delivered_at
        time.sleep(LOST_AFTER_S)
        if _running and not _taken and _delivered_at == delivered_at:
            _delivered_at = None
            with contextlib.suppress(Exception):
                _thread.interrupt_main(signal.Signals(signum))

    threading.Thread(target=later, name="jax_iris-lost-stop", daemon=True).start()


def _swallowed_here(frame: Any) -> bool:
    """Whether an exception raised in ``frame`` would be swallowed: a gc callback or
    ``__del__`` on the stack (weakref callbacks are caught by the unraisable hook)."""
    import gc

    codes = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _redeliver(signum: int) -> None:
    """Raise the stop again shortly, from the main thread's next safe point."""

    def later() -> None:
        time.sleep(REDELIVER_AFTER_S)
        with contextlib.suppress(Exception):
            _thread.interrupt_main(signal.Signals(signum))

    threading.Thread(target=later, name="jax_iris-redeliver", daemon=True).start()


def _unraisablehook(unraisable: Any) -> None:
    """A ``Stopped`` swallowed where Python cannot raise is delivered again, not lost."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _running:
        global _delivered_at
        _delivered_at = None
        _redeliver(getattr(unraisable.exc_value, "signum", signal.SIGINT))
        return
    _previous_unraisablehook(unraisable)


def _import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
    """``import``, with stop signals held until the outermost import on the main thread ends."""
    global _holds
    if threading.get_ident() != threading.main_thread().ident:
        return _original_import(name, globals, locals, fromlist, level)
    _holds += 1
    try:
        return _original_import(name, globals, locals, fromlist, level)
    finally:
        _holds -= 1
        if _holds == 0 and _pending is not None and _running:
            _raise_pending()


def _reopen_closed_std_fds() -> None:
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            new = os.open(os.devnull, os.O_RDWR)
            if new != fd:
                os.dup2(new, fd)
                os.close(new)


class SafeStream(io.TextIOBase):
    """A text stream that never raises: once writing fails (a closed pipe, a full disk)
    later output is dropped and the file descriptor points at /dev/null, so that the
    interpreter's last flush and the runtime's own writes succeed too."""

    def __init__(self, stream: Any, fd: int | None, name: str) -> None:
        self._stream = stream
        self._fd = fd
        self._name = name
        self.failed: OSError | None = None

    @classmethod
    def wrap(cls, stream: Any, fd: int | None, name: str) -> SafeStream:
        if isinstance(stream, SafeStream):
            return stream
        if stream is None and fd is not None:  # closed at start: now /dev/null
            stream = open(fd, "w", closefd=False)  # noqa: SIM115 - lives as long as the process
        if stream is not None and hasattr(stream, "reconfigure"):
            with contextlib.suppress(Exception):
                stream.reconfigure(errors="backslashreplace")
        return cls(stream, fd, name)

    def _fail(self, err: OSError) -> None:
        self.failed = err
        if self._fd is not None:
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, self._fd)
                os.close(null)
        if self._name == "stdout" and err.errno != errno.EPIPE:
            print(
                f"{os.path.basename(sys.argv[0]) or 'jax-iris'}: stdout: cannot write"
                f" ({err.strerror or err}); further output dropped, the run goes on",
                file=sys.stderr,
                flush=True,
            )

    def write(self, text: str) -> int:
        if self.failed is None and self._stream is not None:
            try:
                self._stream.write(text)
            except OSError as err:
                self._fail(err)
            except ValueError:  # closed by someone else
                self.failed = OSError(errno.EBADF, "closed")
        return len(text)

    def flush(self) -> None:
        if self.failed is None and self._stream is not None:
            try:
                self._stream.flush()
            except OSError as err:
                self._fail(err)
            except ValueError:
                self.failed = OSError(errno.EBADF, "closed")

    def isatty(self) -> bool:
        try:
            return self.failed is None and bool(self._stream.isatty())
        except (OSError, ValueError, AttributeError):
            return False

    def fileno(self) -> int:
        if self._fd is not None:
            return self._fd
        return self._stream.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "errors", None) or "backslashreplace"

    @property
    def buffer(self) -> Any:
        return self._stream.buffer
