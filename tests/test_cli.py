"""The scripts as a user runs them: real processes, exit codes, what they print and write."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jax_iris import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, cwd, timeout=300):
    env = {**os.environ, "JAX_IRIS_CACHE_DIR": str(cwd / ".xla-cache")}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("run")
    proc = run("train.py", "--arch", "both", "--epochs", "50", "--log-every", "25", cwd=cwd)
    return cwd, proc


def test_train_end_to_end(trained):
    cwd, proc = trained
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "device: " in out
    assert " atten  epoch 25/50  train_loss " in out and "linear  epoch 50/50" in out
    assert "compile " in out and "train " in out
    for row in ("Loss     Train_Data", "Val_Data", "Accuracy Train_Data", "Test_Data"):
        assert row in out
    assert "Atten_Model  Linear_Model" in out
    for arch in ("atten", "linear"):
        ckpt = checkpoint.load(cwd / "checkpoints" / f"{arch}.pkl")
        assert ckpt.arch == arch and ckpt.config.epochs == 50
        assert ckpt.history["loss"].shape == (50,)
        assert 0 <= ckpt.metrics["test"]["accuracy"] <= 1
        events = list((cwd / "runs" / arch).glob("events.out.tfevents.*"))
        assert len(events) == 1 and events[0].stat().st_size > 1000


def parse_table(stdout):
    """{(metric, split): [value per column]} from the printed evaluation table."""
    table, metric = {}, None
    for line in stdout.splitlines():
        words = line.split()
        if words and words[0] in ("Loss", "Accuracy"):
            metric, words = words[0].lower(), words[1:]
        if metric and words and words[0].endswith("_Data"):
            split = words[0].removesuffix("_Data").lower()
            table[metric, split] = [float(w) for w in words[1:]]
    return table


def test_evaluate_reprints_the_table(trained):
    cwd, proc_train = trained
    proc = run("evaluate.py", "checkpoints/atten.pkl", "checkpoints/linear.pkl", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    table = parse_table(proc.stdout)
    assert table == parse_table(proc_train.stdout)
    assert len(table) == 6
    for column, arch in enumerate(("atten", "linear")):
        metrics = checkpoint.load(cwd / "checkpoints" / f"{arch}.pkl").metrics
        for (metric, split), values in table.items():
            assert values[column] == pytest.approx(metrics[split][metric], abs=5e-5)


def test_no_tensorboard_flag(tmp_path):
    proc = run("train.py", "--arch", "linear", "--epochs", "5", "--no-tensorboard", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "checkpoints" / "linear.pkl").exists()
    assert not (tmp_path / "runs").exists()


def assert_usage_error(proc, *fragments):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--arch", "transformer"], ["invalid choice: 'transformer'"]),
        (["--epochs", "0"], ["epochs must be a positive integer, got 0"]),
        (["--epochs", "-3"], ["epochs must be a positive integer"]),
        (["--epochs", "ten"], ["--epochs", "invalid int value"]),
        (["--lr", "nan"], ["lr must be a finite number > 0, got nan"]),
        (["--lr", "inf"], ["lr must be a finite number > 0"]),
        (["--checkpoint-dir", "/proc/jax_iris"], ["cannot write to /proc/jax_iris"]),
    ],
)
def test_bad_train_input(tmp_path, args, fragments):
    proc = run("train.py", *args, cwd=tmp_path)
    assert_usage_error(proc, *fragments)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "runs").exists()


def test_divergence_writes_nothing_and_keeps_previous(trained, tmp_path):
    cwd, _ = trained
    before = (cwd / "checkpoints" / "atten.pkl").read_bytes()
    proc = run("train.py", "--lr", "1e30", "--epochs", "20", "--log-every", "10", cwd=cwd)
    assert_usage_error(proc, "diverged", "smaller --lr", "Nothing was written")
    assert (cwd / "checkpoints" / "atten.pkl").read_bytes() == before


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "no such checkpoint file"), (b"\x80\x04junk", "junk.pkl: "), (b"", "truncated")],
)
def test_bad_evaluate_input(tmp_path, content, fragment):
    path = tmp_path / ("missing.pkl" if content is None else "junk.pkl")
    if content is not None:
        path.write_bytes(content)
    proc = run("evaluate.py", path, cwd=tmp_path)
    assert_usage_error(proc, fragment)


def test_scripts_are_importable():
    """Scripts are thin: importing one runs nothing."""
    proc = subprocess.run(
        [sys.executable, "-c", "import runpy; runpy.run_path('scripts/train.py')"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert np.isfinite(1.0)
