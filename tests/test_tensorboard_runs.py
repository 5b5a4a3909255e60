"""TensorBoard as a user reads it, with the real ``tensorboard`` package: each train run is
a run of its own, every epoch carries the time it ended, and the run's config is its HParams."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import SHORT_EPOCHS, assert_usage_error, call
from tensorboard.backend.event_processing import event_multiplexer  # the test extra
from tensorboard.plugins.hparams import plugin_data_pb2

from jax_iris.cli import train as train_command
from jax_iris.io import checkpoint
from jax_iris.report.tensorboard import TAG_ACCURACY, TAG_LOSS, epoch_wall_times

BLOCK = 5  # --log-every: four blocks, so four measured times inside each run


def train(tmp_path, capsys, *extra) -> float:
    argv = ["--arch", "atten", "--epochs", SHORT_EPOCHS, "--log-every", BLOCK, *extra]
    argv += ["--checkpoint-dir", tmp_path / "ck", "--logdir", tmp_path / "runs"]
    outcome = call(train_command.main, argv, capsys)
    assert outcome.code == 0, outcome.err
    return time.time()


def hparams_of(accumulator) -> dict[str, object]:
    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {
        name: value.string_value if value.HasField("string_value") else value.number_value
        for name, value in start.hparams.items()
    }


@pytest.mark.slow
def test_two_runs_are_two_tensorboard_runs_with_real_times_and_hparams(tmp_path, capsys):
    before = time.time()
    first_done = train(tmp_path, capsys)
    second_done = train(tmp_path, capsys)

    multiplexer = event_multiplexer.EventMultiplexer()  # EventAccumulator per run
    multiplexer.AddRunsFromDirectory(str(tmp_path / "runs")).Reload()
    runs = sorted(multiplexer.Runs())
    assert len(runs) == 2 and all(run.startswith("atten/") for run in runs)
    saved = checkpoint.load(tmp_path / "ck" / "atten.pkl")  # the second run's

    for run, (start, end) in zip(runs, [(before, first_done), (first_done, second_done)]):
        accumulator = multiplexer.GetAccumulator(run)
        losses = accumulator.Scalars(TAG_LOSS)
        assert [e.step for e in losses] == list(range(SHORT_EPOCHS))  # no duplicate steps
        assert len(accumulator.Scalars(TAG_ACCURACY)) == SHORT_EPOCHS
        times = np.array([e.wall_time for e in losses])
        assert np.all(np.diff(times) >= 0)
        assert len(np.unique(times)) >= SHORT_EPOCHS // BLOCK  # not one stamp for all
        assert start <= times[0] and times[-1] <= end

        assert hparams_of(accumulator) == {
            "arch": "atten",
            "head": "sigmoid",
            "epochs": SHORT_EPOCHS,
            "lr": pytest.approx(0.005),
            "weight_decay": pytest.approx(1e-3),
            "seed": 0,
            "split_seed": 666,
            "log_every": BLOCK,
            "matmul_precision": "highest",
        }
    final = accumulator.Scalars("final/test_accuracy")
    assert [e.value for e in final] == [pytest.approx(saved.metrics["test"]["accuracy"])]
    np.testing.assert_array_equal([e.value for e in losses], saved.history["loss"])


@pytest.mark.slow
def test_a_run_name_is_used_once(tmp_path, capsys):
    train(tmp_path, capsys, "--run-name", "baseline")
    assert [p.name for p in (tmp_path / "runs" / "atten").iterdir()] == ["baseline"]
    argv = ["--epochs", SHORT_EPOCHS, "--run-name", "baseline", "--logdir", tmp_path / "runs"]
    outcome = call(train_command.main, argv, capsys)
    assert_usage_error(outcome, "train.py", "baseline already holds a run", "--run-name")
    for bad in ("a/b", "..", ""):
        outcome = call(train_command.main, ["--run-name", bad], capsys)
        assert_usage_error(outcome, "train.py", "--run-name must be one folder name")


def test_epoch_times_spread_each_block_evenly():
    times = epoch_wall_times(6, 100.0, [(2, 102.0), (6, 110.0)])
    np.testing.assert_allclose(times, [101, 102, 104, 106, 108, 110])
    with pytest.raises(ValueError, match="cover 2 of 6 epochs"):
        epoch_wall_times(6, 100.0, [(2, 102.0)])
    with pytest.raises(ValueError, match="must rise"):
        epoch_wall_times(6, 100.0, [(2, 102.0), (2, 103.0), (6, 110.0)])
