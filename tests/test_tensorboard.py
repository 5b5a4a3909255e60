"""The TensorBoard events train.py writes, read back and compared with the checkpoint.

tensorboardX writes events but has no reader, and tensorboard's EventAccumulator is
not installed, so the TFRecord framing is parsed here and each record decoded with
tensorboardX's own ``Event`` protobuf::

    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.record_writer import masked_crc32c

from jax_iris import checkpoint
from jax_iris.commands import train_command
from jax_iris.report import TAG_ACCURACY, TAG_LOSS

EPOCHS = 30
LOG_EVERY = 7  # not a divisor of EPOCHS: the last chunk is shorter


def read_events(path: Path) -> list[Event]:
    """Every record of a TFRecord event file, checksums verified."""
    data = path.read_bytes()
    events, offset = [], 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        assert header_crc == masked_crc32c(header), f"bad length checksum at byte {offset}"
        body = data[offset + 12 : offset + 12 + length]
        (body_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        assert len(body) == length and body_crc == masked_crc32c(body), f"bad record at {offset}"
        events.append(Event.FromString(body))
        offset += 16 + length
    return events


def scalars(events: list[Event]) -> dict[str, dict[int, float]]:
    """tag -> step -> value; a step logged twice under one tag fails the test."""
    found: dict[str, dict[int, float]] = {}
    for event in events:
        for value in event.summary.value:
            steps = found.setdefault(value.tag, {})
            assert event.step not in steps, f"{value.tag} step {event.step} logged twice"
            steps[event.step] = value.simple_value
    return found


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One real train.py run of both nets with TensorBoard logging."""
    root = tmp_path_factory.mktemp("tb")
    argv = ["--arch", "both", "--epochs", str(EPOCHS), "--log-every", str(LOG_EVERY)]
    argv += ["--checkpoint-dir", str(root / "ck"), "--logdir", str(root / "runs")]
    assert train_command(argv) == 0
    return root


def test_the_tags_are_the_documented_ones():
    assert (TAG_LOSS, TAG_ACCURACY) == ("train/loss", "train/accuracy")


@pytest.mark.parametrize("arch", ["atten", "linear"])
def test_every_epoch_of_the_events_equals_the_saved_history(run_dir, arch):
    files = list((run_dir / "runs" / arch).glob("events.out.tfevents.*"))
    assert len(files) == 1
    events = read_events(files[0])
    assert events[0].file_version.startswith("brain.Event:")
    logged = scalars(events)
    assert set(logged) == {TAG_LOSS, TAG_ACCURACY}

    history = checkpoint.load(run_dir / "ck" / f"{arch}.pkl").history
    assert history["loss"].shape == history["accuracy"].shape == (EPOCHS,)
    for tag, key in ((TAG_LOSS, "loss"), (TAG_ACCURACY, "accuracy")):
        assert sorted(logged[tag]) == list(range(EPOCHS))  # steps 0 .. epochs-1
        values = np.array([logged[tag][step] for step in range(EPOCHS)], np.float32)
        # simple_value is a float32 and so is the history: equal to the last bit.
        np.testing.assert_array_equal(values, history[key])
    assert np.all(np.diff(history["loss"][:5]) != 0)  # a real, moving trajectory


def test_no_tensorboard_writes_no_events(tmp_path):
    argv = ["--epochs", "3", "--log-every", "3", "--no-tensorboard"]
    argv += ["--checkpoint-dir", str(tmp_path / "ck"), "--logdir", str(tmp_path / "runs")]
    assert train_command(argv) == 0
    assert (tmp_path / "ck" / "atten.pkl").is_file()
    assert not (tmp_path / "runs").exists()


def test_the_reader_detects_a_damaged_file(run_dir, tmp_path):
    """The reader above is itself checked: a flipped byte must not read back silently."""
    source = next((run_dir / "runs" / "atten").glob("events.out.tfevents.*"))
    data = bytearray(source.read_bytes())
    data[-10] ^= 0xFF
    damaged = tmp_path / source.name
    damaged.write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="bad record"):
        read_events(damaged)
