"""TensorBoard events: every epoch's loss and accuracy, read back to the last bit, and
where the train command puts them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import SHORT_EPOCHS, call, read_events

from jax_iris.cli import train as train_command
from jax_iris.io import checkpoint
from jax_iris.report.tensorboard import TAG_ACCURACY, TAG_LOSS, tensorboard_events
from jax_iris.train import Metrics


def scalars(events) -> dict[str, dict[int, float]]:
    """tag -> step -> value; a step logged twice under one tag fails the test."""
    found: dict[str, dict[int, float]] = {}
    for event in events:
        for value in event.summary.value:
            steps = found.setdefault(value.tag, {})
            assert event.step not in steps, f"{value.tag} step {event.step} logged twice"
            steps[event.step] = value.simple_value
    return found


def assert_events_are_the_history(path: Path, history: dict[str, np.ndarray]) -> None:
    events = read_events(path)
    assert events[0].file_version.startswith("brain.Event:")
    logged = scalars(events)
    assert {TAG_LOSS, TAG_ACCURACY} <= set(logged)
    epochs = len(history["loss"])
    for tag, key in ((TAG_LOSS, "loss"), (TAG_ACCURACY, "accuracy")):
        assert sorted(logged[tag]) == list(range(epochs))  # steps 0 .. epochs-1
        values = np.array([logged[tag][step] for step in range(epochs)], np.float32)
        # simple_value is a float32 and so is the history: equal to the last bit.
        np.testing.assert_array_equal(values, history[key])


@pytest.fixture(scope="module")
def history() -> Metrics:
    rng = np.random.default_rng(0)
    loss = (1.1 - np.cumsum(rng.uniform(0, 1e-3, 250))).astype(np.float32)
    return Metrics(loss, rng.integers(0, 121, 250).astype(np.float32) / np.float32(120))


def test_every_epoch_is_an_event(history, tmp_path):
    path = tmp_path / "events.out.tfevents.test"
    path.write_bytes(tensorboard_events(history))
    assert_events_are_the_history(path, history._asdict())


def test_the_reader_detects_a_damaged_file(history, tmp_path):
    """The reader above is itself checked: a flipped byte must not read back silently."""
    data = bytearray(tensorboard_events(history))
    data[-10] ^= 0xFF
    damaged = tmp_path / "events.out.tfevents.damaged"
    damaged.write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="bad record"):
        read_events(damaged)


def test_the_train_command_logs_each_nets_history(tmp_path, capsys):
    argv = ["--arch", "both", "--epochs", SHORT_EPOCHS, "--log-every", SHORT_EPOCHS]
    argv += ["--checkpoint-dir", tmp_path / "ck", "--logdir", tmp_path / "runs"]
    outcome = call(train_command.main, argv, capsys)
    assert outcome.code == 0, outcome.err
    for arch in ("atten", "linear"):
        (events,) = (tmp_path / "runs" / arch).glob("*/events.out.tfevents.*")  # its run
        saved = checkpoint.load(tmp_path / "ck" / f"{arch}.pkl").history
        assert saved["loss"].shape == (SHORT_EPOCHS,)
        assert np.all(np.diff(saved["loss"][:5]) != 0)  # a real, moving trajectory
        assert_events_are_the_history(events, saved)


def test_no_tensorboard_writes_no_events(tmp_path, capsys):
    argv = ["--arch", "linear", "--epochs", SHORT_EPOCHS, "--log-every", SHORT_EPOCHS]
    argv += ["--no-tensorboard", "--checkpoint-dir", tmp_path / "ck", "--logdir", tmp_path / "runs"]
    outcome = call(train_command.main, argv, capsys)
    assert outcome.code == 0, outcome.err
    assert (tmp_path / "ck" / "linear.pkl").is_file()
    assert not (tmp_path / "runs").exists()
