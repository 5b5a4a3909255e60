"""What a run shows: progress lines, the blog's evaluation table, TensorBoard scalars."""

from __future__ import annotations

import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jax_iris import registry

SPLIT_LABELS = {"train": "Train_Data", "val": "Val_Data", "test": "Test_Data"}
METRIC_LABELS = {"loss": "Loss", "accuracy": "Accuracy"}
TAG_LOSS = "train/loss"
TAG_ACCURACY = "train/accuracy"

Table = Any  # a SplitMetrics of floats: table.train.loss, ...


def progress_line(arch: str, epoch: int, epochs: int, loss: float, accuracy: float) -> str:
    width = len(str(epochs))
    return (
        f"{arch:>6}  epoch {epoch:>{width}}/{epochs}"
        f"  train_loss {loss:.4f}  train_acc {accuracy:.4f}"
    )


def format_table(tables: Mapping[str, Table]) -> str:
    """The blog's final table: rows Loss and Accuracy x Train / Val / Test, a column per net.

    ``tables`` maps a column name (an arch, or any label) to ``evaluate``'s result.
    """
    columns = [registry.label(name) for name in tables]
    widths = [max(len(c), 6) for c in columns]
    header = f"{'metric':<9}{'split':<11}" + "".join(
        f"{c:>{w + 2}}" for c, w in zip(columns, widths)
    )
    lines = [header, "-" * len(header)]
    for metric, metric_label in METRIC_LABELS.items():
        for i, (split, split_label) in enumerate(SPLIT_LABELS.items()):
            first = metric_label if i == 0 else ""
            cells = "".join(
                f"{getattr(getattr(table, split), metric):>{w + 2}.4f}"
                for table, w in zip(tables.values(), widths)
            )
            lines.append(f"{first:<9}{split_label:<11}{cells}")
    return "\n".join(lines)


def _tensorboardx() -> tuple[type, type]:
    """tensorboardX's ``FileWriter`` and ``Summary`` proto, imported without PyTorch.

    tensorboardX imports torch, when it is installed, only to accept torch tensors;
    we hand it Python floats. Hiding torch during the import saves seconds of start-up.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes "import torch" raise ImportError
    try:
        from tensorboardX import FileWriter
        from tensorboardX.proto.summary_pb2 import Summary
    finally:
        if hide:
            del sys.modules["torch"]
    return FileWriter, Summary


def tensorboard_events(history: Any) -> bytes:
    """Every epoch's train loss and accuracy as one TensorBoard event file's bytes.

    Steps 0 .. epochs-1; one event per epoch carries both scalars (what
    ``SummaryWriter.add_scalar`` would write as two events, at a quarter of the
    cost). The bytes are built in a private folder, so the caller decides where and
    under which name they land (``fileio.commit``).
    """
    FileWriter, Summary = _tensorboardx()
    with tempfile.TemporaryDirectory(prefix="jax_iris_events_") as folder:
        writer = FileWriter(folder)
        try:
            for step, (loss, accuracy) in enumerate(
                zip(np.asarray(history.loss).tolist(), np.asarray(history.accuracy).tolist())
            ):
                values = [
                    Summary.Value(tag=TAG_LOSS, simple_value=loss),
                    Summary.Value(tag=TAG_ACCURACY, simple_value=accuracy),
                ]
                writer.add_summary(Summary(value=values), step)
        finally:
            writer.close()
        (event_file,) = Path(folder).iterdir()
        return event_file.read_bytes()


def event_file_name() -> str:
    """A name TensorBoard reads as an event file, unique to this run."""
    return f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{uuid.uuid4().hex}"
