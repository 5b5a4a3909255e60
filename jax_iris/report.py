"""What a run shows: progress lines, the blog's evaluation table, TensorBoard scalars."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import numpy as np

from jax_iris.train import EpochMetrics

SPLIT_LABELS = {"train": "Train_Data", "val": "Val_Data", "test": "Test_Data"}
METRIC_LABELS = {"loss": "Loss", "accuracy": "Accuracy"}
MODEL_LABELS = {"atten": "Atten_Model", "linear": "Linear_Model"}
TAG_LOSS = "train/loss"
TAG_ACCURACY = "train/accuracy"

Table = Mapping[str, Mapping[str, float]]  # split -> metric -> value


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
    columns = [MODEL_LABELS.get(name, name) for name in tables]
    widths = [max(len(c), 6) for c in columns]
    header = f"{'metric':<9}{'split':<11}" + "".join(
        f"{c:>{w + 2}}" for c, w in zip(columns, widths)
    )
    lines = [header, "-" * len(header)]
    for metric, metric_label in METRIC_LABELS.items():
        for i, (split, split_label) in enumerate(SPLIT_LABELS.items()):
            first = metric_label if i == 0 else ""
            cells = "".join(
                f"{table[split][metric]:>{w + 2}.4f}" for table, w in zip(tables.values(), widths)
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


def write_tensorboard(logdir: str | os.PathLike, history: EpochMetrics) -> str:
    """Every epoch's train loss and accuracy as TensorBoard scalars (steps 0 .. epochs-1).

    One event per epoch carries both scalars (what ``SummaryWriter.add_scalar`` would
    write as two events, at a quarter of the cost). Returns the folder.
    """
    FileWriter, Summary = _tensorboardx()
    writer = FileWriter(str(logdir))
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
    return str(logdir)
