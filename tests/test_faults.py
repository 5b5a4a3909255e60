"""Faults during a run: a diverging net, a disk that fills up, Ctrl-C, SIGKILL. Each ends
in one line and an exit code, and every file that was there before is still readable.

(Bad input, refused before any work, is in test_cli; a stop signal mid-training, in
test_process_life.)
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    SHORT_EPOCHS,
    SUBPROCESS_TIMEOUT,
    assert_usage_error,
    call,
    save_untrained,
    snapshot,
)

from jax_iris.cli import convert, sweep, train
from jax_iris.io import checkpoint
from jax_iris.io.store import STORE_DIR


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of an earlier atten.pkl and linear.pkl (untrained params)."""
    folder = tmp_path_factory.mktemp("previous")
    return {
        f"{arch}.pkl": save_untrained(folder / f"{arch}.pkl", arch).read_bytes()
        for arch in ("atten", "linear")
    }


def restore(previous: dict[str, bytes], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in previous.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.slow
def test_a_diverging_net_writes_nothing_and_keeps_the_previous_checkpoints(
    tmp_path, capsys, previous
):
    ckpt_dir = restore(previous, tmp_path / "ck")
    argv = ["--arch", "both", "--lr", "1e30", "--epochs", SHORT_EPOCHS]
    argv += [
        "--log-every",
        SHORT_EPOCHS,
        "--checkpoint-dir",
        ckpt_dir,
        "--logdir",
        tmp_path / "runs",
    ]
    outcome = call(train.main, argv, capsys)
    assert_usage_error(
        outcome, "train.py", "diverged", "smaller --lr (was 1e+30)", "Nothing was written"
    )
    assert snapshot(ckpt_dir) == previous  # untouched, no temporary files
    assert not (tmp_path / "runs").exists()
    assert "wrote" not in outcome.out


@pytest.mark.slow  # a sweep program of its own
def test_a_sweep_where_every_net_diverges_writes_nothing(tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["--arch", "linear", "--seeds", "2", "--epochs", SHORT_EPOCHS, "--lr", "1e30"]
    outcome = call(sweep.main, [*argv, "--host-devices", "1", "--out", out], capsys)
    assert_usage_error(outcome, "sweep.py", "every net diverged", "smaller --lr", "Nothing was")
    assert [p.name for p in out.iterdir()] == [STORE_DIR]  # the trained chunks, no output


@pytest.mark.torch
def test_a_disk_full_while_writing_a_pth_leaves_nothing(tmp_path, capsys, monkeypatch):
    import torch

    source = save_untrained(tmp_path / "atten.pkl")

    def torn_save(obj, f):
        f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    outcome = call(convert.main, [source, tmp_path / "out.pth"], capsys)
    assert_usage_error(outcome, "convert.py", "cannot write", "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atten.pkl"]  # no temporary left


# ---------------------------------------------------------------- signals, real processes

# A child that saves over an existing checkpoint and stops, at a chosen step of the
# save, until it is killed: os.fsync (temporary file written, not yet in place) or
# os.replace (temporary file complete, the atomic rename not yet done).
KILLED_SAVER = """
import os, sys, time
import jax
from jax_iris.io import checkpoint

path, step = sys.argv[1], sys.argv[2]
old = checkpoint.load(path)
new_params = jax.tree_util.tree_map(lambda a: a + 1.0, old.params)
real = getattr(os, step)

def pause(*args):
    print("paused", flush=True)
    time.sleep(600)
    return real(*args)

setattr(os, step, pause)
checkpoint.save(path, new_params, config=old.config, history=old.history)
print("saved", flush=True)
"""


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_sigkill_while_saving_keeps_the_previous_checkpoint(tmp_path, previous, step):
    path = tmp_path / "atten.pkl"
    path.write_bytes(previous["atten.pkl"])
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVER, path, step],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "paused\n", child.stderr.read()
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=SUBPROCESS_TIMEOUT) == -signal.SIGKILL
    finally:
        child.kill()
        child.communicate()

    assert path.read_bytes() == previous["atten.pkl"]
    assert checkpoint.load(path).arch == "atten"
    # The killed process cannot remove its temporary file and its commit journal: they
    # stay, hidden and not named *.pkl, so nothing that looks for checkpoints picks them
    # up, and the next save recovers the dead commit and removes them.
    stale = sorted(p.name for p in tmp_path.iterdir() if p.name != "atten.pkl")
    assert len(stale) == 2, stale
    assert stale[0].startswith(".atten.pkl.") and stale[0].endswith(".tmp")
    assert stale[1].startswith(".jax-iris-commit.")
    assert [p.name for p in tmp_path.glob("*.pkl")] == ["atten.pkl"]
    old = checkpoint.load(path)
    checkpoint.save(path, old.params, config=old.config, history=old.history)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atten.pkl"]
    assert path.read_bytes() == previous["atten.pkl"]
