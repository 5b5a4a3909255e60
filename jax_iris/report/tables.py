"""What a training run prints: its progress lines and the blog's evaluation table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jax_iris import registry

SPLIT_LABELS = {"train": "Train_Data", "val": "Val_Data", "test": "Test_Data"}
METRIC_LABELS = {"loss": "Loss", "accuracy": "Accuracy"}

Table = Any  # a SplitMetrics of floats: table.train.loss, ...


def progress_line(arch: str, epoch: int, epochs: int, loss: float, accuracy: float) -> str:
    width = len(str(epochs))
    return (
        f"{arch:>6}  epoch {epoch:>{width}}/{epochs}"
        f"  train_loss {loss:.4f}  train_acc {accuracy:.4f}"
    )


def format_table(tables: Mapping[str, Table]) -> str:
    """The blog's final table: rows Loss and Accuracy x Train / Val / Test, a column per net.

    ``tables`` maps a column name (an arch, or any label) to ``evaluate``'s result. A
    value of ``None`` (a baseline's loss) is shown as ``-``.
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
                _cell(getattr(getattr(table, split), metric), w + 2)
                for table, w in zip(tables.values(), widths)
            )
            lines.append(f"{first:<9}{split_label:<11}{cells}")
    return "\n".join(lines)


def _cell(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"
