"""Every command keeps its promises at any moment: one test per point of the review.

1. Ctrl-C, SIGTERM and SIGHUP mid-training are one line, nothing written; a commit killed
   in its renames is completed by the next.
2. A stop signal while the command starts, inside a gc callback, or caught by a library
   (dropped, or replaced with its own error), is one line.
3. A closed, full or broken stdout and a closed stderr never cost the run or its files.
4. A deleted working folder and over-long paths.
5. A decompression bomb in a ``.pth``.
6. Values that load but would break later.
7. (benchmark's flags: tests/test_benchmark.py, as benchmarks/ is not the package.)
8. ``jax-iris`` alone, and commands named as typed.

Each test asserts the exit status, the stderr line and the files before and after.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    EXIT_USAGE,
    SCRIPTS,
    SHORT_EPOCHS,
    SUBPROCESS_TIMEOUT,
    assert_one_line_error,
    assert_usage_error,
    call,
    save_untrained,
    snapshot,
)

import jax_iris.cli
from jax_iris.cli import convert, evaluate, plot, train
from jax_iris.cli.common import NOTHING_WRITTEN
from jax_iris.config import TrainConfig
from jax_iris.io import checkpoint, fileio

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}  # 128 + the signal
WORDS = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "stopped by SIGTERM",
    signal.SIGHUP: "stopped by SIGHUP",
}
TRAIN = ["--epochs", SHORT_EPOCHS, "--log-every", SHORT_EPOCHS]


def start(args, cwd: Path, blocked: bool = False) -> subprocess.Popen:
    """``python ARGS``; ``blocked``: stop signals blocked from its first instruction (the
    mask is inherited), so one sent at once waits for the program's handler."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if blocked else None
    try:
        return subprocess.Popen(
            [sys.executable, *map(str, args)],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        if before is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


def strays(folder: Path) -> list[str]:
    """Temporaries and commit journals left under ``folder``."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob(".*")
        if p.name.endswith(".tmp") or p.name.startswith(fileio.JOURNAL_PREFIX)
    )


# ---------------------------------------------------------------- 1. stop signals, SIGKILL


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["INT", "TERM", "HUP"]
)
def test_stop_signal_during_training_writes_nothing(tmp_path, signum):
    """Ctrl-C, SIGTERM and SIGHUP mid-training: 128 + the signal, one line, files as they were.

    The run is far too long to finish, in short compiled chunks, so that the signal is seen
    between two chunks (Python handles signals only between XLA calls).
    """
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    for arch in ("atten", "linear"):
        save_untrained(ckpt / f"{arch}.pkl", arch)
    before = snapshot(tmp_path)
    argv = ["--epochs", "10000000", "--log-every", "50", "--checkpoint-dir", ckpt]
    child = start([SCRIPTS / "train.py", *argv, "--logdir", tmp_path / "runs"], tmp_path)
    try:
        for line in child.stdout:
            if " epoch " in line:
                break
        else:
            pytest.fail(f"no progress line; stderr: {child.stderr.read()}")
        child.send_signal(signum)
        _, err = child.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        child.kill()
    assert child.returncode == STATUS[signum]
    assert err == f"train.py: {WORDS[signum]}; {NOTHING_WRITTEN}\n"
    assert snapshot(tmp_path) == before and not (tmp_path / "runs").exists()
    assert checkpoint.load(ckpt / "atten.pkl").config == TrainConfig(arch="atten", epochs=3)


# A commit into three folders that stops at a chosen step until it is killed.
_PAUSED_COMMIT = """
import os, sys, time
from pathlib import Path
from jax_iris.io import fileio

step, count = sys.argv[1], int(sys.argv[2])
real, calls = getattr(os, step), [0]

def pause(*args):
    calls[0] += 1
    if calls[0] == count:
        print("paused", flush=True)
        time.sleep(600)
    return real(*args)

setattr(os, step, pause)
files = {Path(f"d{i}") / "out.txt": f"new {i}".encode() for i in range(3)}
fileio.commit(files, remove=[Path("d0") / "stale.txt"])
"""


def _killed_commit(tmp_path: Path, step: str, count: int) -> dict[str, bytes]:
    for i in range(3):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "out.txt").write_bytes(f"old {i}".encode())
    (tmp_path / "d0" / "stale.txt").write_bytes(b"stale")
    before = snapshot(tmp_path)
    child = start(["-c", _PAUSED_COMMIT, step, count], tmp_path)
    try:
        assert child.stdout.readline() == "paused\n", child.stderr.read()
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=SUBPROCESS_TIMEOUT) == -signal.SIGKILL
    finally:
        child.kill()
        child.communicate()
    return before


@pytest.mark.subprocess
def test_sigkill_during_the_renames_is_completed_by_the_next_commit(tmp_path):
    before = _killed_commit(tmp_path, "replace", 2)  # killed after the first rename
    mixed = snapshot(tmp_path)
    assert mixed["d0/out.txt"] == b"new 0" and mixed["d1/out.txt"] == b"old 1"  # the mix
    assert strays(tmp_path)
    # The next commit into any of the folders finishes the dead one first.
    fileio.commit({tmp_path / "d2" / "other.txt": b"other"})
    after = snapshot(tmp_path)
    assert [after[f"d{i}/out.txt"] for i in range(3)] == [b"new 0", b"new 1", b"new 2"]
    assert "d0/stale.txt" not in after and after["d2/other.txt"] == b"other"
    assert strays(tmp_path) == []
    assert set(after) == set(before) - {"d0/stale.txt"} | {"d2/other.txt"}


@pytest.mark.subprocess
def test_sigkill_before_the_journal_is_written_is_rolled_back(tmp_path):
    before = _killed_commit(tmp_path, "fsync", 2)  # killed while staging the second file
    assert strays(tmp_path)
    assert fileio.recover(tmp_path / "d1") == []  # nothing completed: not committed
    after = snapshot(tmp_path)
    assert {name: after[name] for name in before} == before  # every target as it was
    for i in range(3):  # the other folders are cleaned by their own next commit
        fileio.recover(tmp_path / f"d{i}")
    assert snapshot(tmp_path) == before and strays(tmp_path) == []


@pytest.mark.subprocess
def test_a_live_commit_is_left_alone(tmp_path):
    """Another process's recovery must not touch a commit whose process still runs."""
    (tmp_path / "d0").mkdir()
    child = start(["-c", _PAUSED_COMMIT, "fsync", 1], tmp_path)
    try:
        assert child.stdout.readline() == "paused\n", child.stderr.read()
        staged = strays(tmp_path)
        assert fileio.recover(tmp_path / "d0") == [] and strays(tmp_path) == staged
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=SUBPROCESS_TIMEOUT)
    finally:
        child.kill()
        child.communicate()
    for i in range(3):
        fileio.recover(tmp_path / f"d{i}")
    assert strays(tmp_path) == []


def test_commit_removes_listed_files_in_the_same_commit(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "old.csv").write_bytes(b"old")
    written = fileio.commit(
        {tmp_path / "a" / "new.csv": b"new"}, remove=[tmp_path / "a" / "old.csv"]
    )
    assert written == [tmp_path / "a" / "new.csv"]
    assert snapshot(tmp_path) == {"a/new.csv": b"new"}


def test_ctrl_c_while_staging_leaves_no_temporary(tmp_path):
    (tmp_path / "keep.txt").write_bytes(b"kept")

    def interrupted(f) -> None:
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fileio.commit({tmp_path / "a.txt": b"a", tmp_path / "keep.txt": interrupted})
    assert snapshot(tmp_path) == {"keep.txt": b"kept"}


# ---------------------------------------------------------------- 2. start-up, gc callbacks


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize("command", ["train", "evaluate", "plot", "sweep"])
def test_stop_signal_while_starting_is_one_line(tmp_path, command, signum):
    """Sent before the program's first line: it waits (blocked) and lands at once."""
    ckpt = save_untrained(tmp_path / "atten.pkl")
    argv = {
        "train": TRAIN,
        "evaluate": [ckpt],
        "plot": [ckpt, "--out", "figs"],
        "sweep": ["--seeds", "2", "--epochs", SHORT_EPOCHS, "--host-devices", "1"],
    }[command]
    before = snapshot(tmp_path)
    child = start([SCRIPTS / f"{command}.py", *argv], tmp_path, blocked=True)
    child.send_signal(signum)
    _, err = child.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert child.returncode == STATUS[signum], err
    assert err == f"{command}.py: {WORDS[signum]}; {NOTHING_WRITTEN}\n"
    assert snapshot(tmp_path) == before


_STOP_IN_GC_CALLBACK = """
import gc, os, signal, sys, time
from jax_iris import process_life
process_life.install()
from jax_iris.cli.common import run_main

def body():
    def callback(phase, info):
        if phase == "start":
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))  # Python code: the handler runs here, inside gc
    gc.callbacks.append(callback)
    gc.collect()
    gc.callbacks.remove(callback)
    for _ in range(400):  # 20 s, unless the stop is raised
        time.sleep(0.05)
    print("went on", flush=True)
    return 0

process_life.exit(run_main("demo", body))
"""


_LIBRARY_DROPS_THE_STOP = """
import os, signal, time
from jax_iris import process_life
process_life.install()
from jax_iris.cli.common import run_main

def body():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))  # Python code: the handler raises Stopped here
    except:  # a library that catches everything and goes on
        pass
    print("dropped", flush=True)
    for _ in range(400):  # 20 s, unless the stop is raised
        time.sleep(0.05)
    print("went on", flush=True)
    return 0

process_life.exit(run_main("demo", body))
"""


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("script", "status", "stdout", "words"),
    [
        (_STOP_IN_GC_CALLBACK, 130, "", "interrupted"),  # no "Exception ignored"
        (_LIBRARY_DROPS_THE_STOP, 143, "dropped\n", "stopped by SIGTERM"),  # raised again
    ],
    ids=["gc-callback", "library-drops-it"],
)
def test_a_stop_that_would_be_swallowed_is_not_lost(tmp_path, script, status, stdout, words):
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert (proc.returncode, proc.stdout) == (status, stdout), proc.stderr
    assert proc.stderr == f"demo: {words}; {NOTHING_WRITTEN}\n"
    assert time.monotonic() - started < 15  # not after the body's 20 s


_LIBRARY_REPLACES_THE_STOP = """
import os, signal, sys
from jax_iris import process_life
process_life.install()
import jax_iris.sweep, jax_iris.train
from jax_iris.cli import sweep, train

COMMAND, TARGET, CALL = sys.argv[1], sys.argv[2], int(sys.argv[3])
module = jax_iris.train if TARGET == "fit" else jax_iris.sweep
real, calls = getattr(module, TARGET), []

def replaced(*args, **kwargs):
    calls.append(1)
    if len(calls) == CALL:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))  # Python code: the handler raises Stopped here
        except:  # as JAX 0.8 binds a primitive: everything caught, then its own error
            pass
        raise Exception("couldn't apply typeof to args")
    return real(*args, **kwargs)

setattr(module, TARGET, replaced)
process_life.exit({"train": train, "sweep": sweep}[COMMAND].main(sys.argv[4:]))
"""


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("command", "target", "call", "kept"),
    [
        ("train", "fit", 1, NOTHING_WRITTEN),
        ("sweep", "train_chunk", 2, "1 of 2 chunks are kept in"),
    ],
    ids=["train", "sweep"],
)
def test_a_library_that_replaces_the_stop_with_its_own_error(tmp_path, command, target, call, kept):
    """JAX 0.8.1/0.8.2 catch a ``Stopped`` with a bare ``except:`` while binding a primitive
    and raise "couldn't apply typeof to args" instead: still one line, 143, kept as said."""
    argv = {
        "train": TRAIN,
        "sweep": ["--seeds", "4", "--chunk-size", "2", "--epochs", SHORT_EPOCHS]
        + ["--arch", "atten", "--host-devices", "1"],
    }[command]
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _LIBRARY_REPLACES_THE_STOP,
            command,
            target,
            str(call),
            *map(str, argv),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.startswith(f"{command}.py: stopped by SIGTERM; {kept}"), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    after = snapshot(tmp_path)
    if command == "train":
        assert after == before
    else:  # the first chunk is in the store, the second not, no output was written
        new = sorted(p for p in after if p not in before)
        assert [Path(p).name for p in new] == ["000000.chunk", "manifest.json"], new
        assert all(p.startswith("results/.sweep-store/") for p in new), new


# ---------------------------------------------------------------- 3. output streams


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("redirect", "err_line"),
    [
        (">&-", ""),
        ("> /dev/full", "train.py: stdout: cannot write (No space left on device);"),
        ("| true", ""),
    ],
    ids=["closed", "full", "broken-pipe"],
)
def test_stdout_problems_never_cost_the_run(tmp_path, redirect, err_line):
    if redirect == "> /dev/full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    command = f"'{sys.executable}' '{SCRIPTS / 'train.py'}' {' '.join(map(str, TRAIN))}"
    status = "${PIPESTATUS[0]}" if redirect.startswith("|") else "$?"
    script = f"{command} {redirect}; echo {status} >&2"
    proc = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    *lines, status = proc.stderr.splitlines()
    assert status == "0", proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert (lines[0].startswith(err_line) and len(lines) == 1) if err_line else lines == []
    assert checkpoint.load(tmp_path / "checkpoints" / "atten.pkl").config.epochs == SHORT_EPOCHS
    assert strays(tmp_path) == []


@pytest.mark.subprocess
def test_closed_stderr_keeps_errors_off_stdout(tmp_path):
    script = f"'{sys.executable}' '{SCRIPTS / 'train.py'}' --epochs 0 2>&-; echo $?"
    proc = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.stdout == f"{EXIT_USAGE}\n"  # the status only: no error line on stdout
    assert snapshot(tmp_path) == {}


# ---------------------------------------------------------------- 4. paths


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_deleted_working_folder_does_not_stop_a_run_with_absolute_paths(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    argv = " ".join(map(str, [*TRAIN, "--checkpoint-dir", tmp_path / "ck"]))
    script = (
        f"cd '{gone}' && rmdir '{gone}' && '{sys.executable}' '{SCRIPTS / 'train.py'}'"
        f" {argv} --logdir '{tmp_path / 'runs'}'"
    )
    proc = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert checkpoint.load(tmp_path / "ck" / "atten.pkl").arch == "atten"


LONG_PATH = "/".join(["x" * 200] * 25)  # 5,000 bytes of 200-byte parts


@pytest.mark.parametrize(
    ("command", "argv", "prog"),
    [
        (train, [*TRAIN, "--checkpoint-dir", LONG_PATH], "train.py"),
        (train, [*TRAIN, "--logdir", LONG_PATH], "train.py"),
        (plot, ["atten.pkl", "--out", LONG_PATH], "plot.py"),
        (convert, ["atten.pkl", "y" * 300 + ".pth"], "convert.py"),
        (convert, ["y" * 300 + ".pth", "out.pkl"], "convert.py"),
        (convert, ["atten.pkl", LONG_PATH + "/a.pth"], "convert.py"),
    ],
    ids=["checkpoint-dir", "logdir", "plot-out", "convert-out", "convert-in", "convert-deep"],
)
def test_over_long_paths_are_one_line(tmp_path, capsys, monkeypatch, command, argv, prog):
    monkeypatch.chdir(tmp_path)
    save_untrained(tmp_path / "atten.pkl")
    before = snapshot(tmp_path)
    outcome = call(command.main, argv, capsys)
    assert_usage_error(outcome, prog, "File name too long")
    assert len(outcome.err) < 400
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- 5. decompression bomb


@pytest.mark.slow
@pytest.mark.torch
def test_a_pth_decompression_bomb_is_refused_before_loading(tmp_path, capsys):
    import torch

    buffer = io.BytesIO()  # a 3-element bias viewed from a 64 MiB storage of zeros
    torch.save({"layer_1.k.bias": torch.zeros(1 << 24)[:3]}, buffer)
    plain = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in plain.infolist():
            archive.writestr(info.filename, plain.read(info.filename))
    assert bomb.stat().st_size < 1 << 20
    outcome = call(convert.main, [bomb, tmp_path / "out.pkl"], capsys)
    assert_usage_error(outcome, "convert.py", "bomb.pth: refused, it would unpack to 67,1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.pth"]


# ---------------------------------------------------------------- 6. values that break later


def _odd_checkpoint(path: Path, kind: str) -> Path:
    import jax

    from jax_iris.config import TrainConfig
    from jax_iris.models import flatten_params, init_params, unflatten_params

    params = flatten_params(init_params("atten", jax.random.key(0)))
    history = None
    first = next(iter(params))
    if kind == "extreme-history":
        history = {"loss": np.array([-1e308, 1e308]), "accuracy": np.array([0.5, 0.6])}
    elif kind == "huge-history":
        history = {"loss": np.array([1e308, 0.5]), "accuracy": np.array([0.5, 0.6])}
    elif kind == "beyond-float32":
        params = {k: v.astype(np.float64) for k, v in params.items()}
        params[first] = params[first] + 1e39
    elif kind == "nan":
        params[first] = np.full_like(params[first], np.nan)
    config = TrainConfig(arch="atten", epochs=2)
    return checkpoint.save(path, unflatten_params(params), config=config, history=history)


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("extreme-history", "history/loss holds float64 values beyond float32's range"),
        ("huge-history", "history/loss holds float64 values beyond float32's range"),
        ("beyond-float32", "layer_1/k/bias holds float64 values beyond float32's range"),
        ("nan", "layer_1/k/bias holds values that are not finite"),
    ],
)
@pytest.mark.parametrize("command", [plot, evaluate], ids=["plot", "evaluate"])
def test_values_that_would_break_later_are_refused_on_load(
    tmp_path, capsys, monkeypatch, command, kind, needle
):
    monkeypatch.chdir(tmp_path)
    path = _odd_checkpoint(tmp_path / "odd.pkl", kind)
    before = snapshot(tmp_path)
    argv = [path, "--out", "figs"] if command is plot else [path]
    outcome = call(command.main, argv, capsys)
    prog = "plot.py" if command is plot else "evaluate.py"
    assert_usage_error(outcome, prog, needle)
    assert outcome.out == "" and snapshot(tmp_path) == before


# ---------------------------------------------------------------- 8. small things


def test_jax_iris_alone_prints_usage_on_stderr(capsys):
    outcome = call(jax_iris.cli.main, [], capsys)
    assert (outcome.code, outcome.out) == (EXIT_USAGE, "")
    assert outcome.err.startswith("usage: jax-iris COMMAND")
    assert call(jax_iris.cli.main, ["--help"], capsys)[:1] == (0,)


def test_errors_name_the_command_as_typed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outcome = call(jax_iris.cli.main, ["train", "--epochs", "0"], capsys)
    assert_usage_error(outcome, "jax-iris train", "--epochs must be")
    outcome = call(jax_iris.cli.main, ["evaluate"], capsys)
    assert_usage_error(outcome, "jax-iris evaluate", "the following arguments are required")
    assert_one_line_error(call(train.main, ["--epochs", "0"], capsys).err, "train.py: error:")
