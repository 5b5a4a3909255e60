"""All or nothing, checked before work, bounded numbers, and the rest of the fault review.

Each test asserts the exit status, the exact line on stderr (no traceback) and the files
before and after, byte for byte, hidden temporaries included. A full disk is simulated
by making ``os.fsync`` fail once ``fileio.commit`` has staged a given number of files;
Ctrl-C by raising KeyboardInterrupt from a step that runs after the work, and once by a
real SIGINT sent to a training process while it writes.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import (
    EXIT_USAGE,
    SHORT_EPOCHS,
    SUBPROCESS_TIMEOUT,
    call,
    parse_table,
    save_untrained,
    snapshot,
)

from jax_iris.cli import common, convert, evaluate, plot, sweep, train
from jax_iris.cli.common import NOTHING_WRITTEN, OUTPUTS_WRITTEN
from jax_iris.io import checkpoint, fileio
from jax_iris.io.store import STORE_DIR
from jax_iris.models import flatten_params
from jax_iris.quote import clean_path, quote
from jax_iris.report import plots, tensorboard

EXIT_INTERRUPTED = 130  # jax_iris.cli.common.EXIT_INTERRUPTED, restated: the contract
TRAIN = ["--epochs", SHORT_EPOCHS, "--log-every", SHORT_EPOCHS]
SWEEP = ["--arch", "atten", "--seeds", "3", "--epochs", SHORT_EPOCHS, "--host-devices", "1"]
KEPT = "nothing was written, earlier files are as they were"
KEPT_ON_CTRL_C = NOTHING_WRITTEN
NO_SPACE = os.strerror(errno.ENOSPC)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def earlier(workdir) -> dict[str, bytes]:
    """Outputs of an earlier train run (both nets) and an earlier sweep, to be kept."""
    (workdir / "checkpoints").mkdir()
    for arch in ("atten", "linear"):
        save_untrained(workdir / "checkpoints" / f"{arch}.pkl", arch)
        events = workdir / "runs" / arch / "events.out.tfevents.1.earlier"
        events.parent.mkdir(parents=True)
        events.write_bytes(b"earlier events of " + arch.encode())
    (workdir / "out").mkdir()
    for name in ("sweep.csv", "summary.json", "accuracy.png", "loss.png"):
        (workdir / "out" / name).write_bytes(b"earlier " + name.encode())
    return snapshot(workdir)


def disk_full_after(monkeypatch, staged: int) -> None:
    """The next ``fileio.commit`` finds room for ``staged`` files; the next one fails."""
    real_commit, real_fsync = fileio.commit, os.fsync

    def commit(files):
        calls = itertools.count(1)

        def fsync(fd: int) -> None:
            if next(calls) > staged:
                raise OSError(errno.ENOSPC, NO_SPACE)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        try:
            return real_commit(files)
        finally:
            monkeypatch.setattr(os, "fsync", real_fsync)

    monkeypatch.setattr(fileio, "commit", commit)


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
    return err.rstrip("\n")


# ---------------------------------------------------------------- 3. all or nothing


@pytest.mark.parametrize("staged", [1, 3], ids=["atten-events", "linear-events"])
@pytest.mark.slow
def test_full_disk_while_writing_events_keeps_every_earlier_file(
    workdir, earlier, capsys, monkeypatch, staged
):
    """--arch both stages atten.pkl, atten's events, linear.pkl, linear's events."""
    disk_full_after(monkeypatch, staged)
    code, out, err = call(train.main, [*TRAIN, "--arch", "both"], capsys)
    assert code == EXIT_USAGE
    assert one_line(err) == f"train.py: error: cannot write the outputs ({NO_SPACE}); {KEPT}"
    assert "wrote" not in out
    assert snapshot(workdir) == earlier


@pytest.mark.slow
def test_ctrl_c_while_events_are_built_keeps_every_earlier_file(
    workdir, earlier, capsys, monkeypatch
):
    monkeypatch.setattr(tensorboard, "tensorboard_events", interrupt)
    code, out, err = call(train.main, [*TRAIN, "--arch", "both"], capsys)
    assert code == EXIT_INTERRUPTED
    assert one_line(err) == f"train.py: interrupted; {KEPT_ON_CTRL_C}"
    assert "Atten_Model" in out and "wrote" not in out  # trained, then stopped
    assert snapshot(workdir) == earlier


@pytest.mark.slow
def test_ctrl_c_after_the_sweep_summary_keeps_every_earlier_file(
    workdir, earlier, capsys, monkeypatch
):
    monkeypatch.setattr(plots, "sweep_histograms", interrupt)
    code, out, err = call(sweep.main, [*SWEEP, "--out", "out"], capsys)
    assert code == EXIT_INTERRUPTED
    assert one_line(err).startswith("sweep.py: interrupted; no output was written, earlier")
    assert "all 1 chunks are kept in out/.sweep-store/" in err and "run the same command" in err
    assert "test accuracy (95% CI)" in out and "wrote" not in out  # summarised, then stopped
    now = snapshot(workdir)
    assert {k: v for k, v in now.items() if STORE_DIR not in k} == earlier
    assert any(k.endswith(".chunk") for k in now)  # the trained nets are kept


@pytest.mark.slow
def test_plot_with_room_for_one_png_replaces_neither(workdir, earlier, capsys, monkeypatch):
    disk_full_after(monkeypatch, 1)
    runs = [workdir / "checkpoints" / "atten.pkl", workdir / "checkpoints" / "linear.pkl"]
    code, out, err = call(plot.main, [*runs, "--out", "out"], capsys)
    assert code == EXIT_USAGE
    assert one_line(err) == (
        f"plot.py: error: cannot write to out ({NO_SPACE}); {KEPT}; choose another --out"
    )
    assert snapshot(workdir) == earlier


@pytest.mark.slow
def test_two_runs_in_the_same_second_keep_both_event_files(workdir, capsys, monkeypatch):
    monkeypatch.setattr(tensorboard, "time", SimpleNamespace(time=lambda: 1_700_000_000.0))
    for seed in (1, 2):
        code, _, err = call(train.main, [*TRAIN, "--seed", seed], capsys)
        assert (code, err) == (0, "")
    events = sorted((workdir / "runs" / "atten").glob("*/events.out.tfevents.*"))
    assert len(events) == 2 and events[0].read_bytes() != events[1].read_bytes()
    assert events[0].parent != events[1].parent  # each run a TensorBoard run of its own


# A training process that pauses in the write phase, once the first output is staged and
# not yet flushed, so that a real SIGINT lands there.
_PAUSED_WRITER = """
import os, sys, time
from jax_iris.io import fileio
from jax_iris.cli import train

real_commit = fileio.commit

def commit(files):
    def fsync(fd):
        print("writing", flush=True)
        for _ in range(6000):  # short sleeps: Python acts on a signal between them
            time.sleep(0.05)
    os.fsync = fsync
    return real_commit(files)

fileio.commit = commit
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.subprocess
@pytest.mark.slow
def test_real_sigint_while_writing_keeps_every_earlier_file(workdir, earlier):
    child = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_WRITER, *map(str, TRAIN), "--arch", "both"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in child.stdout:
            if line == "writing\n":
                break
        else:
            pytest.fail(f"never reached the write phase: {child.stderr.read()}")
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        child.kill()
    assert child.returncode == EXIT_INTERRUPTED
    assert one_line(err) == f"train.py: interrupted; {NOTHING_WRITTEN}"
    assert snapshot(workdir) == earlier


@pytest.mark.slow
def test_ctrl_c_during_the_renames_is_all_or_nothing(workdir, earlier, capsys, monkeypatch):
    real_replace = os.replace

    def replace(source, target):
        real_replace(source, target)
        os.kill(os.getpid(), signal.SIGINT)  # as a terminal sends it: to the process

    monkeypatch.setattr(os, "replace", replace)
    code, out, err = call(train.main, [*TRAIN, "--arch", "both"], capsys)
    after = snapshot(workdir)
    assert not [name for name in after if name.endswith(".tmp")]
    renamed = [name for name in earlier if after.get(name) != earlier[name]]
    assert code == EXIT_INTERRUPTED and "wrote" not in out
    if renamed:  # the signal waited for the renames: every output new, then it stops
        assert one_line(err) == f"train.py: interrupted; {OUTPUTS_WRITTEN}"
        assert sorted(renamed) == ["checkpoints/atten.pkl", "checkpoints/linear.pkl"]
    else:  # stopped before the renames: every earlier file kept
        assert one_line(err) == f"train.py: interrupted; {KEPT_ON_CTRL_C}"
        assert after == earlier
    assert not [name for name in after if ".jax-iris-commit." in name]


# ---------------------------------------------------------------- 4. checked before work


def _dangling(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(path.parent / "gone")


@pytest.mark.parametrize(
    ("command", "argv", "link", "line"),
    [
        (
            train,
            ["--checkpoint-dir", "ck"],
            "ck",
            "train.py: error: cannot write to ck: it is a dangling symlink;"
            " choose another --checkpoint-dir",
        ),
        (
            train,
            ["--logdir", "logs"],
            "logs/atten",
            "train.py: error: cannot write to logs/atten: it is a dangling symlink;"
            " choose another --logdir",
        ),
        (
            sweep,
            ["--out", "res"],
            "res",
            "sweep.py: error: cannot write to res: it is a dangling symlink; choose another --out",
        ),
    ],
    ids=["checkpoint-dir", "logdir-arch", "out"],
)
def test_dangling_symlink_is_refused_before_training(
    workdir, earlier, capsys, command, argv, link, line
):
    _dangling(workdir / link)
    before = snapshot(workdir)
    code, out, err = call(command.main, [*(TRAIN if command is train else SWEEP), *argv], capsys)
    assert code == EXIT_USAGE
    assert one_line(err) == line
    assert out == ""  # not even the device line: nothing ran
    assert snapshot(workdir) == before and (workdir / link).is_symlink()


@pytest.mark.parametrize("flag", ["--checkpoint-dir", "--logdir"])
def test_over_long_name_is_refused_before_training(workdir, earlier, capsys, flag):
    limit = os.pathconf(workdir, "PC_NAME_MAX")
    name = "x" * (limit + 1)
    code, out, err = call(train.main, [*TRAIN, flag, f"new/{name}"], capsys)
    assert code == EXIT_USAGE
    long_path, long_name = clean_path(f"new/{name}"), quote(name, 40)
    assert one_line(err) == (
        f"train.py: error: cannot write to {long_path} (the name {long_name} is longer than"
        f" {limit} bytes); choose another {flag}"
    )
    assert out == ""
    assert snapshot(workdir) == earlier and not (workdir / "new").exists()


@pytest.mark.slow
def test_a_folder_where_a_png_goes_is_found_before_anything_is_replaced(workdir, earlier, capsys):
    (workdir / "out" / "loss.png").unlink()
    (workdir / "out" / "loss.png").mkdir()
    before = snapshot(workdir)
    runs = [workdir / "checkpoints" / "atten.pkl", workdir / "checkpoints" / "linear.pkl"]
    code, _, err = call(plot.main, [*runs, "--out", "out"], capsys)
    assert code == EXIT_USAGE
    assert one_line(err) == (
        "plot.py: error: cannot write out/loss.png: it is a folder; nothing was written,"
        " earlier files are as they were; move it or choose another --out"
    )
    assert snapshot(workdir) == before


def test_a_folder_where_a_checkpoint_goes_is_found_before_training(workdir, capsys):
    (workdir / "checkpoints" / "atten.pkl").mkdir(parents=True)
    code, out, err = call(train.main, TRAIN, capsys)
    assert code == EXIT_USAGE
    assert one_line(err) == (
        "train.py: error: cannot write checkpoints/atten.pkl: it is a folder;"
        " choose another --checkpoint-dir"
    )
    assert out == "" and snapshot(workdir) == {}


# ---------------------------------------------------------------- 5. numbers


@pytest.mark.parametrize(
    ("command", "argv", "line"),
    [
        (
            train,
            ["--epochs", "100000000000"],
            "train.py: error: --epochs must be an integer from 1 to 10,000,000, got 100000000000",
        ),
        (
            sweep,
            ["--seeds", "4294967297"],
            "sweep.py: error: --seeds must be an integer from 1 to 1,000,000, got 4294967297",
        ),
        (
            sweep,
            ["--seeds", "100000000000"],
            "sweep.py: error: --seeds must be an integer from 1 to 1,000,000, got 100000000000",
        ),
        (
            train,
            ["--lr", "1e39"],
            "train.py: error: --lr must be a number > 0 that float32 can hold (up to 3.4e38),"
            " got 1e+39",
        ),
        (
            train,
            ["--weight-decay", "1e300"],
            "train.py: error: --weight-decay must be a number >= 0 that float32 can hold"
            " (up to 3.4e38), got 1e+300",
        ),
        (
            sweep,
            ["--weight-decay", "0", "1e300"],
            "sweep.py: error: --weight-decay must be a number >= 0 that float32 can hold"
            " (up to 3.4e38), got 1e+300",
        ),
    ],
    ids=[
        "train-epochs",
        "sweep-seeds-2**32+1",
        "sweep-seeds-1e11",
        "train-lr",
        "train-weight-decay",
        "sweep-weight-decay",
    ],
)
def test_out_of_range_numbers_are_refused_in_one_line(workdir, capsys, command, argv, line):
    code, out, err = call(command.main, argv, capsys)
    assert code == EXIT_USAGE
    assert one_line(err) == line
    assert out == "" and snapshot(workdir) == {}


@pytest.mark.parametrize(
    ("command", "bounds"),
    [
        (train, ["--epochs EPOCHS       full-batch epochs, 1 to 10,000,000"]),
        (sweep, ["N <= 1,000,000", "1 to 10,000,000"]),
    ],
    ids=["train", "sweep"],
)
def test_help_states_the_bounds(capsys, command, bounds):
    code, out, err = call(command.main, ["--help"], capsys)
    assert (code, err) == (0, "")
    text = " ".join(out.split())
    for bound in bounds:
        assert " ".join(bound.split()) in text


# ---------------------------------------------------------------- 6. the rest


@pytest.mark.slow
def test_evaluate_shows_every_checkpoint_given_labelled_by_path(workdir, capsys):
    for folder, seed in (("a", 1), ("b", 2)):
        (workdir / folder).mkdir()
        save_untrained(workdir / folder / "atten.pkl", seed=seed)
    before = snapshot(workdir)
    code, out, err = call(evaluate.main, ["a/atten.pkl", "b/atten.pkl"], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split() == ["metric", "split", "a/atten.pkl", "b/atten.pkl"]
    loss = parse_table(out)["loss", "train"]
    assert len(loss) == 2 and loss[0] != loss[1]  # two different nets, two columns
    assert snapshot(workdir) == before


# -- convert: exact where possible, else one line


def _state_dict(kind: str):
    import torch

    from jax_iris.pytorch import reference

    state_dict = reference.build("atten", seed=0).state_dict()
    weight = state_dict["linear.weight"]
    if kind in ("bfloat16", "float16"):
        return {k: v.to(getattr(torch, kind)) for k, v in state_dict.items()}
    if kind == "float64-exact":
        return {k: v.double() for k, v in state_dict.items()}
    if kind == "float64":
        return {k: v.double() + 1e-12 for k, v in state_dict.items()}
    if kind == "sparse":
        return {**state_dict, "linear.weight": weight.to_sparse()}
    if kind == "quantized":
        quantized = torch.quantize_per_tensor(weight, 0.01, 0, torch.qint8)
        return {**state_dict, "linear.weight": quantized}
    if kind == "meta":
        return {**state_dict, "linear.weight": torch.empty(weight.shape, device="meta")}
    if kind == "int-key":
        return {0: weight}
    raise AssertionError(kind)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("kind", "note"),
    [
        ("bfloat16", ""),
        ("float16", ""),
        ("float64-exact", ""),
        ("sparse", ""),
        (
            "float64",
            "in.pth: float64 weights stored as float32, the dtype jax_iris trains and evaluates"
            " in (rounded: largest relative change ",
        ),
    ],
)
def test_convert_is_exact_where_it_can_be(workdir, capsys, kind, note):
    import torch

    state_dict = _state_dict(kind)
    torch.save(state_dict, workdir / "in.pth")
    code, out, err = call(convert.main, ["in.pth", "out.pkl"], capsys)
    assert code == 0
    if note:
        assert one_line(err).startswith(note)
    else:
        assert err == ""
    assert "wrote out.pkl (atten net, from in.pth)" in out
    params = flatten_params(checkpoint.load(workdir / "out.pkl").params)
    weight = state_dict["linear.weight"]
    expected = (weight.to_dense() if kind == "sparse" else weight).float().numpy().T
    assert params["linear/kernel"].dtype == np.float32
    np.testing.assert_array_equal(params["linear/kernel"], expected)  # float32 rounding only


@pytest.mark.torch
@pytest.mark.parametrize(
    ("kind", "line"),
    [
        (
            "quantized",
            "convert.py: error: in.pth: state_dict does not fit the atten net: linear.weight is"
            " a quantized tensor (qint8); dequantize it first (tensor.dequantize()) if float"
            " weights are what you want",
        ),
        (
            "meta",
            "convert.py: error: in.pth: state_dict does not fit the atten net: linear.weight is"
            " a meta tensor, which holds no values",
        ),
        (
            "int-key",
            "convert.py: error: in.pth: key 0 (int) is not a string; a state_dict maps"
            " parameter names to tensors",
        ),
    ],
)
def test_convert_refuses_what_it_cannot_convert_in_one_line(workdir, capsys, kind, line):
    import warnings

    import torch

    with warnings.catch_warnings():  # torch deprecates creating quantized tensors
        warnings.simplefilter("ignore")
        torch.save(_state_dict(kind), workdir / "in.pth")
    before = snapshot(workdir)
    code, out, err = call(convert.main, ["in.pth", "out.pkl"], capsys)
    assert code == EXIT_USAGE
    assert one_line(err) == line
    assert out == "" and snapshot(workdir) == before


# -- the compilation cache: at most one line, once, and the run goes on


@pytest.mark.slow
def test_unusable_cache_folder_costs_one_line(workdir, capsys, monkeypatch):
    (workdir / "file").write_bytes(b"")
    monkeypatch.setenv("JAX_IRIS_CACHE_DIR", str(workdir / "file" / "xla"))
    code, out, err = call(train.main, TRAIN, capsys)
    assert code == 0
    assert one_line(err) == (
        f"compilation cache off ('{workdir}/file/xla': {os.strerror(errno.ENOTDIR)});"
        " compiling afresh"
    )
    assert "wrote checkpoints/atten.pkl" in out
    assert sorted(snapshot(workdir)) == ["checkpoints/atten.pkl", "file", *_events(workdir)]


@pytest.mark.slow
def test_read_only_cache_folder_costs_one_line(workdir, capsys, monkeypatch):
    """A folder the user may not write to (simulated: tests may run as root, who may)."""
    cache = workdir / "cache"
    cache.mkdir()
    real = common.tempfile.TemporaryFile

    def refuse_in_cache(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == cache:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(cache))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(common.tempfile, "TemporaryFile", refuse_in_cache)
    monkeypatch.setenv("JAX_IRIS_CACHE_DIR", str(cache))
    code, out, err = call(train.main, TRAIN, capsys)
    assert code == 0
    assert one_line(err) == (
        f"compilation cache off ('{cache}': {os.strerror(errno.EACCES)}); compiling afresh"
    )
    assert "wrote checkpoints/atten.pkl" in out


def _events(workdir: Path) -> list[str]:
    return [str(p.relative_to(workdir)) for p in (workdir / "runs").rglob("events.out.*")]


# The first run finds the disk full for every cache entry: JAX leaves each one empty, as
# a write to a full disk does.
_FULL_CACHE_RUN = """
import errno, os, sys
from jax._src import lru_cache
from jax_iris.cli import train

def put(self, key, value):
    (self.path / f"{key}-cache").write_bytes(b"")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

lru_cache.LRUCache.put = put
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_full_cache_disk_costs_one_line_and_later_runs_none(workdir):
    cache = workdir / "cache"
    env = {**os.environ, "JAX_IRIS_CACHE_DIR": str(cache)}

    def run(*code: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *code, *map(str, TRAIN), "--no-tensorboard"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
        )

    full = run("-c", _FULL_CACHE_RUN)
    assert full.returncode == 0, full.stderr
    assert one_line(full.stderr).startswith(f"compilation cache problem in '{cache}' (OSError:")
    entries = list(cache.glob("*-cache"))
    assert entries and all(e.stat().st_size == 0 for e in entries)
    assert checkpoint.load(workdir / "checkpoints" / "atten.pkl").arch == "atten"

    later = run("-m", "jax_iris", "train")  # the empty entries are dropped, not read
    assert (later.returncode, later.stderr) == (0, "")
    assert all(e.stat().st_size > 0 for e in cache.glob("*-cache"))

    for entry in cache.glob("*-cache"):  # a disk that filled up halfway through each write
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    torn = run("-m", "jax_iris", "train")
    assert torn.returncode == 0
    assert one_line(torn.stderr).startswith(
        f"compilation cache problem in '{cache}' (error: Error -5 while decompressing"
    )
    assert run("-m", "jax_iris", "train").stderr == ""  # the torn entries were dropped


# -- output to a closed pipe or in an odd encoding never loses the run


@pytest.mark.subprocess
@pytest.mark.slow
def test_closed_stdout_pipe_does_not_lose_the_run(workdir):
    """``train.py --epochs 50 ... | head -1``: the reader goes after the first line."""
    with subprocess.Popen(
        [sys.executable, "-m", "jax_iris", "train", "--epochs", "50", "--log-every", "10"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as child:
        first = child.stdout.readline()
        child.stdout.close()
        err = child.stderr.read()
        code = child.wait(timeout=SUBPROCESS_TIMEOUT)
    assert first.startswith(b"device: ")
    assert (code, err) == (0, b"")
    assert checkpoint.load(workdir / "checkpoints" / "atten.pkl").config.epochs == 50
    assert len(_events(workdir)) == 1


@pytest.mark.subprocess
@pytest.mark.slow
def test_non_utf8_folder_name_with_utf8_output_does_not_lose_the_run(workdir):
    folder = os.fsencode(workdir) + b"/caf\xe9"
    try:
        os.mkdir(folder)
    except OSError as err:  # some file systems accept only UTF-8 names
        pytest.skip(f"this file system refuses the name: {err}")
    proc = subprocess.run(
        [sys.executable, "-m", "jax_iris", "train", *map(str, TRAIN)]
        + ["--checkpoint-dir", folder, "--logdir", folder + b"/runs"],
        cwd=workdir,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert (proc.returncode, proc.stderr) == (0, b""), proc.stderr
    wrote = f"wrote {workdir}/caf\\udce9/atten.pkl\n".encode()  # the odd byte, escaped
    assert wrote in proc.stdout
    assert checkpoint.load(os.fsdecode(folder + b"/atten.pkl")).arch == "atten"
    assert len(os.listdir(folder + b"/runs/atten")) == 1
