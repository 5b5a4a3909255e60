"""What TensorBoard shows of runs: a run's scalars and HParams, a grid's HParams.

A training run's TensorBoard events (``tensorboard_events``) carry each epoch's loss
and accuracy at the time that epoch ended, the run's config as HParams (a session
start and end, so TensorBoard's HParams dashboard lists every run it finds with its
hyperparameters, no experiment file needed) and the final table as ``final/*`` scalars.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jax_iris.report.tables import METRIC_LABELS, SPLIT_LABELS, Table

if TYPE_CHECKING:  # sweep_report imports jax; a run's events need none of it
    from jax_iris.report.sweep_report import CellSummary

TAG_LOSS = "train/loss"
TAG_ACCURACY = "train/accuracy"
FINAL_TAG = "final/{split}_{metric}"  # the final table, one scalar per cell
FILE_VERSION = "brain.Event:2"


def _tensorboardx() -> tuple[type, type]:
    """tensorboardX's ``FileWriter`` and ``Summary`` proto, imported without PyTorch.

    tensorboardX imports torch, when it is installed, only to accept torch tensors;
    we hand it Python floats. Hiding torch during the import saves seconds of start-up.
    """
    # The *_pb2 modules make their classes at import time and ship no stubs, so the
    # checker cannot see them (here and below).
    with _torch_hidden():
        from tensorboardX import FileWriter
        from tensorboardX.proto.summary_pb2 import Summary  # pyright: ignore[reportAttributeAccessIssue]
    return FileWriter, Summary


@contextlib.contextmanager
def _torch_hidden() -> Iterator[None]:
    hide = "torch" not in sys.modules
    if hide:
        # None (typeshed allows only modules): importing torch then raises ImportError.
        sys.modules["torch"] = None  # pyright: ignore[reportArgumentType]
    try:
        yield
    finally:
        if hide:
            del sys.modules["torch"]


def epoch_wall_times(
    epochs: int, start: float, block_ends: Sequence[tuple[int, float]]
) -> np.ndarray:
    """When each epoch ended, as Unix times [epochs] (float64).

    Training runs in compiled blocks, and ``block_ends`` holds ``(epochs done, time)``
    at the end of each (the progress lines); ``start`` is when the first block began
    computing. Within a block the epochs are spread evenly: each block's time is
    real, the epochs inside it share it equally.
    """
    times = np.empty(epochs, np.float64)
    done, since = 0, start
    for end_epoch, end_time in block_ends:
        end_time = max(end_time, since)
        count = end_epoch - done
        if count <= 0 or end_epoch > epochs:
            raise ValueError(f"block ends must rise from 1 to {epochs}, got {end_epoch}")
        times[done:end_epoch] = since + (end_time - since) * np.arange(1, count + 1) / count
        done, since = end_epoch, end_time
    if done != epochs:
        raise ValueError(f"block ends cover {done} of {epochs} epochs")
    return times


def tensorboard_events(
    history: Any,
    wall_times: Sequence[float] | np.ndarray | None = None,
    hparams: Mapping[str, Any] | None = None,
    final: Table | None = None,
) -> bytes:
    """One training run as one TensorBoard event file's bytes.

    Steps 0 .. epochs-1 carry that epoch's train loss and accuracy, stamped
    ``wall_times[step]`` (default: now). ``hparams`` (the run's config) become an
    HParams session spanning the run; ``final`` (``evaluate``'s table) becomes the
    ``final/<split>_<metric>`` scalars at step ``epochs``. One event per epoch carries
    both scalars (what ``SummaryWriter.add_scalar`` would write as two events). Only
    bytes are returned: the caller decides where they land (``fileio.commit``).
    """
    _, Summary = _tensorboardx()
    from tensorboardX.proto.event_pb2 import Event  # pyright: ignore[reportAttributeAccessIssue]

    losses = np.asarray(history.loss).tolist()
    accuracies = np.asarray(history.accuracy).tolist()
    epochs = len(losses)
    now = time.time()
    times = [now] * epochs if wall_times is None else np.asarray(wall_times, np.float64).tolist()
    if len(times) != epochs:
        raise ValueError(f"{len(times)} wall times for {epochs} epochs")
    start = times[0] if times else now
    end = times[-1] if times else now
    events = [Event(wall_time=start, file_version=FILE_VERSION)]
    if hparams is not None:
        events.append(Event(wall_time=start, step=0, summary=_session(hparams)[0]))
    for step, (loss, accuracy, wall_time) in enumerate(zip(losses, accuracies, times)):
        values = [
            Summary.Value(tag=TAG_LOSS, simple_value=loss),
            Summary.Value(tag=TAG_ACCURACY, simple_value=accuracy),
        ]
        events.append(Event(wall_time=wall_time, step=step, summary=Summary(value=values)))
    if final is not None:
        values = [
            Summary.Value(
                tag=FINAL_TAG.format(split=split, metric=metric),
                simple_value=float(getattr(getattr(final, split), metric)),
            )
            for split in SPLIT_LABELS
            for metric in METRIC_LABELS
        ]
        events.append(Event(wall_time=end, step=epochs, summary=Summary(value=values)))
    if hparams is not None:
        events.append(Event(wall_time=end, step=epochs, summary=_session(hparams)[1]))
    return b"".join(_record(event.SerializeToString()) for event in events)


def _session(hparams: Mapping[str, Any]) -> tuple[Any, Any]:
    """tensorboardX's HParams session start and end summaries for ``hparams``."""
    with _torch_hidden():
        from tensorboardX.summary import hparams as session

    _, start, end = session(dict(hparams), {})
    return start, end


def _record(data: bytes) -> bytes:
    """``data`` framed as a TFRecord: length, its masked CRC32C, data, its masked CRC32C."""
    from tensorboardX.record_writer import masked_crc32c

    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def _event_file_bytes(folder: str) -> bytes:
    (event_file,) = Path(folder).iterdir()
    return event_file.read_bytes()


def event_file_name() -> str:
    """A name TensorBoard reads as an event file, unique to this run."""
    return f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{uuid.uuid4().hex}"


# TensorBoard HParams for a grid: one run per cell, plus the experiment at the top level.
HPARAMS = ("arch", "head", "lr", "weight_decay", "epochs")
HPARAMS_METRICS = {  # tag -> its description in the experiment summary
    "cell/success_rate": "share of nets with train accuracy >= the success threshold",
    "cell/train_accuracy": "mean final train accuracy",
    "cell/val_accuracy": "mean final validation accuracy",
    "cell/test_accuracy": "mean final test accuracy",
}
HPARAMS_EVENTS_NAME = "events.out.tfevents.grid"  # fixed, so a rerun replaces, never doubles


def cell_run_name(arch: str, head: str, lr: float, weight_decay: float) -> str:
    """A cell's TensorBoard run: ``<arch>_<head>_lr<lr>_wd<weight decay>``, each value the
    shortest decimal of its float32 (distinct cells, distinct runs)."""
    return f"{arch}_{head}_lr{str(np.float32(lr))}_wd{str(np.float32(weight_decay))}"


def cell_hparams(cell: CellSummary) -> dict[str, Any]:
    """The cell's ``HPARAMS``, named as TensorBoard shows them (its field names)."""
    return {name: getattr(cell, name) for name in HPARAMS}


def cell_metrics(cell: CellSummary) -> dict[str, float]:
    """The scalars a cell's run logs, from ``sweep_report.summarize_grid``'s cell."""
    return {
        "cell/success_rate": cell.success.rate,
        **{f"cell/{split}_accuracy": getattr(cell.accuracy, split).mean for split in SPLIT_LABELS},
    }


def hparams_events(cells: Sequence[CellSummary]) -> dict[str, bytes]:
    """A grid as TensorBoard HParams runs: {run name: one event file's bytes}.

    ``cells`` are ``summarize_grid(...).cells``. Each cell becomes the run
    ``cell_run_name`` of its arch, head, lr and weight decay: its hyperparameters
    (tensorboardX ``hparams``' session start and end, status success) and the
    ``HPARAMS_METRICS`` scalars at step ``epochs``. The run ``""`` (the log folder
    itself) holds the one experiment summary: every hyperparameter with its discrete
    domain (the values of the grid), so the dashboard can filter and sort, and every
    metric. TensorBoard reads the experiment from whichever run carries it and expects
    just one, so the cell runs carry none. As ``tensorboard_events``, nothing is
    written where the caller sees it.
    """
    FileWriter, Summary = _tensorboardx()
    with _torch_hidden():
        from tensorboardX.summary import hparams

    files = {"": _summaries_bytes(FileWriter, [(_experiment(cells, Summary), 0)])}
    for cell in cells:
        metrics = cell_metrics(cell)
        _, start, end = hparams(cell_hparams(cell), metrics)
        scalars = Summary(
            value=[Summary.Value(tag=tag, simple_value=value) for tag, value in metrics.items()]
        )
        name = cell_run_name(cell.arch, cell.head, cell.lr, cell.weight_decay)
        files[name] = _summaries_bytes(
            FileWriter, [(start, 0), (scalars, cell.epochs), (end, cell.epochs)]
        )
    return files


def _experiment(cells: Sequence[CellSummary], Summary: type) -> Any:
    """tensorboardX's experiment summary, with the grid's values as each domain."""
    from google.protobuf.struct_pb2 import ListValue
    from tensorboardX.proto.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo, MetricName  # pyright: ignore[reportAttributeAccessIssue]
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData  # pyright: ignore[reportAttributeAccessIssue]
    from tensorboardX.proto.summary_pb2 import SummaryMetadata  # pyright: ignore[reportAttributeAccessIssue]

    infos = []
    for name in HPARAMS:
        values = list(dict.fromkeys(getattr(cell, name) for cell in cells))
        is_text = all(isinstance(v, str) for v in values)
        domain = ListValue()
        domain.extend(values if is_text else sorted(float(v) for v in values))
        kind = "DATA_TYPE_STRING" if is_text else "DATA_TYPE_FLOAT64"
        infos.append(HParamInfo(name=name, type=DataType.Value(kind), domain_discrete=domain))
    metrics = [
        MetricInfo(name=MetricName(tag=tag), description=text)
        for tag, text in HPARAMS_METRICS.items()
    ]
    content = HParamsPluginData(
        experiment=Experiment(hparam_infos=infos, metric_infos=metrics), version=0
    )
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(
            plugin_name="hparams", content=content.SerializeToString()
        )
    )
    return Summary(value=[Summary.Value(tag="_hparams_/experiment", metadata=metadata)])


def _summaries_bytes(FileWriter: type, summaries: Sequence[tuple[Any, int]]) -> bytes:
    """``(summary, step)`` pairs as one event file's bytes, built in a private folder."""
    with tempfile.TemporaryDirectory(prefix="jax_iris_events_") as folder:
        writer = FileWriter(folder)
        try:
            for summary, step in summaries:
                writer.add_summary(summary, step)
        finally:
            writer.close()
        return _event_file_bytes(folder)
