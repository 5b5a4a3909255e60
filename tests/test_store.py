"""The sweep's results store: chunks kept as they finish, resume, shards, refusals.

Outputs of an interrupted-and-resumed sweep, or of shards, are byte-identical to one
uninterrupted run; a store of another sweep, a damaged chunk or an edited manifest
never mixes into the results.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    SCRIPTS,
    SHORT_EPOCHS,
    SUBPROCESS_TIMEOUT,
    assert_one_line_error,
    assert_usage_error,
    call,
    snapshot,
)

from jax_iris.cli import sweep as sweep_cli
from jax_iris.cli.common import UsageError
from jax_iris.config import TrainConfig
from jax_iris.io.store import STORE_DIR
from jax_iris.sweep import train_grid

PROG = "sweep.py"
# 40 nets in 5 chunks of 8, long enough per chunk that a signal lands between chunks.
LONG = ["--arch", "atten", "--seeds", 40, "--chunk-size", 8, "--epochs", 3000]
LONG += ["--host-devices", 1, "--no-tensorboard"]
CHUNKS = 5
SMALL = ["--arch", "linear", "--seeds", 6, "--chunk-size", 2, "--epochs", SHORT_EPOCHS]
SMALL += ["--host-devices", 1]


def outputs(folder: Path) -> dict[str, bytes]:
    """The sweep's outputs (the store aside), with their bytes."""
    return {k: v for k, v in snapshot(folder).items() if not k.startswith(STORE_DIR)}


def chunk_files(out: Path) -> list[Path]:
    return sorted(out.glob(f"{STORE_DIR}/*/*/*.chunk"))


def start(args: list[object], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, SCRIPTS / "sweep.py", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, err


def wait_for_chunks(out: Path, proc: subprocess.Popen, count: int) -> None:
    """Poll the store (no sleeping on a guess) until ``count`` chunks are there."""
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while len(chunk_files(out)) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no chunks stored in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    """The outputs of the long sweep run once, uninterrupted."""
    cwd = tmp_path_factory.mktemp("reference")
    code, _, err = finish(start([*LONG, "--out", "out"], cwd))
    assert code == 0, err
    return outputs(cwd / "out")


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("how", "status"),
    [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143), (signal.SIGINT, 130)],
)
def test_a_stopped_sweep_resumes_to_the_same_bytes(tmp_path, reference, how, status):
    proc = start([*LONG, "--out", "out"], tmp_path)
    wait_for_chunks(tmp_path / "out", proc, 2)
    os.killpg(proc.pid, how) if how == signal.SIGKILL else proc.send_signal(how)
    code, _, err = finish(proc)
    assert code == status, err
    if how != signal.SIGKILL:
        assert_one_line_error(err, "chunks are kept in", "run the same command again to resume")
        kept = int(err.split(" of ")[0].split()[-1])
        assert kept == len(chunk_files(tmp_path / "out"))  # the line says what is on disk
    else:
        kept = len(chunk_files(tmp_path / "out"))
    assert 2 <= kept < CHUNKS
    assert outputs(tmp_path / "out") == {}  # no output before every chunk is done
    before = {p: p.read_bytes() for p in chunk_files(tmp_path / "out")}

    code, out, err = finish(start([*LONG, "--out", "out"], tmp_path))
    assert code == 0, err
    done = len(before)
    assert f"resuming: {done} of {CHUNKS} chunks already in" in out
    assert f"training {CHUNKS - done}" in out
    assert f"{(CHUNKS - done) * 8} nets x 3000 epochs" in out  # only the missing chunks
    assert all(p.read_bytes() == data for p, data in before.items())  # kept, not retrained
    assert outputs(tmp_path / "out") == reference


@pytest.mark.slow
@pytest.mark.subprocess
def test_three_shards_in_parallel_one_killed_and_rerun_give_the_single_runs_outputs(
    tmp_path, reference
):
    shards = {k: start([*LONG, "--out", "out", "--shard", f"{k}/3"], tmp_path) for k in range(3)}
    os.killpg(shards[1].pid, signal.SIGKILL)
    results = {k: finish(shards[k]) for k in (0, 2)}
    finish(shards[1])
    for k, (code, out, err) in results.items():
        assert code == 0, err
        assert f"shard {k}/3 (--shard): 2 of the chunks" in out or f"shard {k}/3" in out
    assert len(chunk_files(tmp_path / "out")) < CHUNKS  # shard 1's chunks are missing
    assert outputs(tmp_path / "out") == {}
    code, out, err = finish(start([*LONG, "--out", "out", "--shard", "1/3"], tmp_path))
    assert code == 0, err
    assert "wrote " in out  # it found every chunk present and wrote the outputs
    assert outputs(tmp_path / "out") == reference
    # the plain command with every chunk present trains nothing and writes the same
    code, out, err = finish(start([*LONG, "--out", "out"], tmp_path))
    assert code == 0 and f"resuming: {CHUNKS} of {CHUNKS}" in out and "training 0" in out
    assert outputs(tmp_path / "out") == reference


def test_shards_come_from_the_flag_or_a_slurm_array():
    assert sweep_cli.parse_shard("1/3", {}) == sweep_cli.Shard(1, 3, "--shard")
    assert sweep_cli.parse_shard(None, {}) is None
    env = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert sweep_cli.parse_shard(None, env) == sweep_cli.Shard(2, 4, "SLURM")
    assert sweep_cli.parse_shard("0/1", env).source == "--shard"  # the flag wins
    for bad in ("3/3", "1", "a/b", "-1/3", "1/0", "１/3"):
        with pytest.raises(UsageError, match="shard"):
            sweep_cli.parse_shard(bad, {})
    with pytest.raises(UsageError, match="must be integers"):
        sweep_cli.parse_shard(None, {**env, "SLURM_ARRAY_TASK_ID": "x"})


@pytest.fixture
def small(tmp_path, capsys):
    """A small sweep run once into tmp_path/out (3 chunks); its outputs."""
    code, _, err = call(sweep_cli.main, [*SMALL, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    return outputs(tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--epochs", SHORT_EPOCHS + 1], "--epochs (20 there, 21 here)"),
        (["--lr", 0.01], "--lr"),
        (["--split-seed", 7], "--split-seed"),
        (["--head", "logits"], "--head"),
        (["--keep-history"], "--keep-history"),
        (["--matmul-precision", "default"], "--matmul-precision"),
    ],
)
def test_another_sweep_into_the_store_is_refused_naming_the_flag(
    tmp_path, capsys, small, change, named
):
    before = snapshot(tmp_path / "out")
    outcome = call(sweep_cli.main, [*SMALL, *change, "--out", tmp_path / "out"], capsys)
    assert_usage_error(outcome, PROG, "holds another sweep", named, "--fresh")
    assert snapshot(tmp_path / "out") == before


@pytest.mark.slow
def test_another_version_is_refused(tmp_path, capsys, small, monkeypatch):
    real = sweep_cli.manifest_of

    def other_jax(*args):
        manifest = real(*args)
        manifest["versions"]["jax"] = "0.0.1"
        return manifest

    monkeypatch.setattr(sweep_cli, "manifest_of", other_jax)
    before = snapshot(tmp_path / "out")
    outcome = call(sweep_cli.main, [*SMALL, "--out", tmp_path / "out"], capsys)
    assert_usage_error(
        outcome, PROG, "holds another sweep", "versions jax", "'0.0.1' here", "with those versions"
    )
    assert snapshot(tmp_path / "out") == before


@pytest.mark.slow
def test_the_xla_flags_are_recorded_and_other_flags_refused(tmp_path, capsys, small, monkeypatch):
    """The flags the nets were trained under are part of what decides their numbers."""
    from jax_iris import platform

    (manifest,) = (tmp_path / "out").glob(f"{STORE_DIR}/*/manifest.json")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    flags = platform.numeric_xla_flags()
    assert set(platform.xla_flags("cpu")) <= set(flags)  # this process runs with the defaults
    assert json.loads(manifest.read_text())["xla_flags"] == flags
    assert summary["run"]["xla_flags"] == flags

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_min_max=false")
    before = snapshot(tmp_path / "out")
    outcome = call(sweep_cli.main, [*SMALL, "--out", tmp_path / "out"], capsys)
    assert_usage_error(
        outcome, PROG, "holds another sweep", "xla_flags", "fast_min_max=false", "XLA_FLAGS"
    )
    assert snapshot(tmp_path / "out") == before


@pytest.mark.slow
def test_an_edited_manifest_is_refused(tmp_path, capsys, small):
    (manifest,) = (tmp_path / "out").glob(f"{STORE_DIR}/*/manifest.json")
    values = json.loads(manifest.read_text())
    values["sweep"]["seeds"] = 5
    manifest.write_text(json.dumps(values))
    before = snapshot(tmp_path / "out")
    outcome = call(sweep_cli.main, [*SMALL, "--out", tmp_path / "out"], capsys)
    assert_usage_error(outcome, PROG, "was changed by hand", "--seeds")
    assert snapshot(tmp_path / "out") == before


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "foreign", "garbage", "folder"])
def test_a_damaged_or_foreign_chunk_is_trained_again_never_mixed_in(
    tmp_path, capsys, small, damage
):
    first, second, _ = chunk_files(tmp_path / "out")
    if damage == "truncate":
        second.write_bytes(second.read_bytes()[:-5])
    elif damage == "foreign":
        shutil.copyfile(first, second)  # a real chunk, another index
    elif damage == "garbage":
        second.write_bytes(b"\x80\x04cos\nsystem\n" * 10)
    else:
        second.unlink()
        second.mkdir()
    if damage == "folder":
        outcome = call(sweep_cli.main, [*SMALL, "--out", tmp_path / "out"], capsys)
        # cannot read it (one line), nor write the retrained chunk there (one line, exit 2)
        assert outcome.code == 2 and outcome.err.count("\n") == 2, outcome.err
        assert "Traceback" not in outcome.err and "cannot write" in outcome.err
        assert "run the same command again to resume" in outcome.err
        assert outputs(tmp_path / "out") == small  # the earlier outputs are as they were
        return
    code, out, err = call(sweep_cli.main, [*SMALL, "--out", tmp_path / "out"], capsys)
    assert code == 0
    assert_one_line_error(err, "is damaged or from another sweep", "training that chunk again")
    assert "resuming: 2 of 3 chunks" in out
    assert outputs(tmp_path / "out") == small


@pytest.mark.slow
def test_fresh_replaces_another_sweep_and_its_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    grid = [*SMALL, "--lr", 0.01, 0.02, "--out", out]
    assert call(sweep_cli.main, grid, capsys).code == 0
    assert (out / "success.png").exists() and (out / "tensorboard").is_dir()
    code, _, err = call(sweep_cli.main, [*SMALL, "--seeds", 3, "--fresh", "--out", out], capsys)
    assert code == 0, err
    names = sorted(outputs(out))
    assert names == ["accuracy.png", "summary.json", "sweep.csv"]  # the grid's files are gone
    assert len(list((out / STORE_DIR).iterdir())) == 1  # the old store too
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"] == names


def test_a_folder_in_an_outputs_place_is_found_before_training(tmp_path, capsys):
    (tmp_path / "out" / "sweep.csv").mkdir(parents=True)
    start_time = time.monotonic()
    outcome = call(sweep_cli.main, [*SMALL, "--out", tmp_path / "out"], capsys)
    assert_usage_error(outcome, PROG, "is in the way", "nothing was written")
    assert time.monotonic() - start_time < 5
    assert not (tmp_path / "out" / STORE_DIR).exists()  # nothing trained, nothing stored


@pytest.mark.slow
def test_keep_history_and_keep_params_write_what_they_say(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*SMALL, "--keep-history", "--keep-params", "--out", out]
    assert call(sweep_cli.main, argv, capsys).code == 0
    history = np.load(out / "linear-sigmoid-history.npy", allow_pickle=False)
    assert history.shape == (6, SHORT_EPOCHS, 2) and history.dtype == np.float32
    grid = train_grid(
        TrainConfig(arch="linear", epochs=SHORT_EPOCHS), range(6), history=True, params=True
    )
    np.testing.assert_array_equal(history[..., 0], grid.history.loss)
    np.testing.assert_array_equal(history[..., 1], grid.history.accuracy)
    with np.load(out / "linear-sigmoid-params.npz", allow_pickle=False) as kept:
        assert kept["layer_1/kernel"].shape == (6, 4, 10)
        np.testing.assert_array_equal(
            kept["layer_3/bias"], grid.params["params"]["layer_3"]["bias"]
        )
    summary = json.loads((out / "summary.json").read_text())
    assert "linear-sigmoid-history.npy" in summary["outputs"]
