"""The blog's convergence figures (its Figures 3 and 4) drawn from saved checkpoints.

Every checkpoint carries its per-epoch history, so plotting needs no retraining::

    python scripts/plot.py checkpoints/atten.pkl checkpoints/linear.pkl --out plots

writes ``plots/accuracy.png`` and ``plots/loss.png``: train accuracy and train loss per
epoch, one line per run, all runs on the same axes.

matplotlib is an optional extra (``plot``); it is imported only when a figure is drawn,
through its non-interactive Agg canvas and without pyplot's global state.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

DEFAULT_OUT = "plots"
INSTALL_HINT = "matplotlib is not installed; install the plot extra: pip install 'jax-iris[plot]'"
_DPI = 120
_FIGSIZE = (7.0, 4.5)  # inches: 840 x 540 pixels at _DPI


class FigureSpec(NamedTuple):
    metric: str  # a key of the checkpoint history
    filename: str
    title: str
    ylabel: str


FIGURES = (
    FigureSpec("accuracy", "accuracy.png", "Train accuracy per epoch", "train accuracy"),
    FigureSpec("loss", "loss.png", "Train loss per epoch", "train loss (cross-entropy)"),
)

# With the blog's sigmoid head the three "logits" lie in (0, 1), so the softmax
# cross-entropy cannot fall below -log(e / (e + 2)); drawn as a floor on the loss plot.
SIGMOID_LOSS_FLOOR = -math.log(math.e / (math.e + 2))


class PlotError(Exception):
    """A run cannot be plotted, or matplotlib is missing; the message says what to do."""


class Run(NamedTuple):
    label: str  # legend entry
    history: Mapping[str, np.ndarray]  # "loss", "accuracy": float [epochs]
    head: str = "sigmoid"


def load_runs(paths: Sequence[str | os.PathLike]) -> list[Run]:
    """One ``Run`` per checkpoint file, labelled by its net (by its path if a net repeats)."""
    from jax_iris import checkpoint, registry
    from jax_iris.quote import quote

    loaded = []
    for path in paths:
        try:
            loaded.append((str(path), checkpoint.load(path)))
        except checkpoint.CheckpointError as err:
            raise PlotError(str(err)) from None
    archs = [ckpt.arch for _, ckpt in loaded]
    runs = []
    for path, ckpt in loaded:
        label = registry.label(ckpt.arch)
        if archs.count(ckpt.arch) > 1:
            label = f"{label} ({quote(path, 60)})"
        runs.append(Run(label, _checked_history(path, ckpt.history), ckpt.config.head))
    return runs


def _checked_history(path: str, history: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    if history is None:
        raise PlotError(f"{path}: holds no per-epoch history; retrain it with scripts/train.py")
    metrics = [figure.metric for figure in FIGURES]
    missing = [m for m in metrics if m not in history]
    if missing:
        raise PlotError(f"{path}: its history has no {' or '.join(missing)} per epoch")
    arrays = {m: np.asarray(history[m], dtype=np.float64) for m in metrics}
    if any(a.ndim != 1 or a.size == 0 for a in arrays.values()):
        raise PlotError(f"{path}: its history is empty or not one value per epoch")
    return arrays


def require_matplotlib() -> tuple[type, type]:
    """matplotlib's ``Figure`` and Agg canvas classes; ``PlotError`` if it is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(INSTALL_HINT) from None
    return Figure, FigureCanvasAgg


def draw(figure: FigureSpec, runs: Sequence[Run]) -> Any:
    """A matplotlib Figure of one metric: every run's history against epochs 1..N.

    The figure sits on an Agg canvas of its own: no display, no pyplot registry.
    """
    figure_class, canvas_class = require_matplotlib()
    fig = figure_class(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    canvas_class(fig)
    ax = fig.add_subplot()
    for run in runs:
        values = run.history[figure.metric]
        ax.plot(np.arange(1, values.size + 1), values, linewidth=1.8, label=run.label)
    if figure.metric == "accuracy":
        ax.set_ylim(0.0, 1.02)
    elif all(run.head == "sigmoid" for run in runs):
        ax.axhline(
            SIGMOID_LOSS_FLOOR,
            color="0.5",
            linestyle=":",
            linewidth=1.2,
            label=f"lowest loss a sigmoid head allows ({SIGMOID_LOSS_FLOOR:.4f})",
        )
    ax.set_title(figure.title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(figure.ylabel)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return fig


def png_bytes(fig: Any, dpi: int | None = None) -> bytes:
    """The figure as PNG bytes, drawn in memory (nothing touches the disk)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def run_figures(runs: Sequence[Run], out_dir: str | os.PathLike) -> dict[Path, bytes]:
    """``accuracy.png`` and ``loss.png`` for ``runs``, as {path in out_dir: PNG bytes}.

    Nothing is written: the caller writes them together (``fileio.commit``).
    """
    if not runs:
        raise PlotError("nothing to plot: give at least one checkpoint")
    return {Path(out_dir) / f.filename: png_bytes(draw(f, runs)) for f in FIGURES}


def sweep_histograms(results: Mapping[tuple[str, str], Any]) -> bytes:
    """Final accuracy per split over a sweep's nets, one colour per (arch, head): PNG bytes."""
    from jax_iris.data import load_split
    from jax_iris.train import SPLITS

    figure_class, canvas_class = require_matplotlib()
    fig = figure_class(figsize=(13, 4), dpi=100, layout="constrained")
    canvas_class(fig)
    sizes = {split: len(part.y) for split, part in zip(SPLITS, load_split())}
    for i, split in enumerate(SPLITS):
        ax = fig.add_subplot(1, len(SPLITS), i + 1)
        n = sizes[split]
        bins = np.linspace(-0.5 / n, 1 + 0.5 / n, n + 2)  # one bin per attainable accuracy k/n
        for (arch, head), result in results.items():
            accuracy = np.asarray(getattr(result.final, split).accuracy)
            ax.hist(accuracy, bins=bins, alpha=0.6, label=f"{arch}, {head} ({accuracy.size} nets)")
        ax.set_title(f"{split} accuracy after training")
        ax.set_xlabel("accuracy")
        ax.set_ylabel("nets")
        ax.legend()
    fig.suptitle("Final accuracy over initial-weight seeds")
    return png_bytes(fig)
