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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

if TYPE_CHECKING:  # sweep_report imports jax; drawing checkpoints needs none of it
    from jax_iris.report.sweep_report import CellSummary, GridSummary, PairedSummary

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
    from jax_iris import registry
    from jax_iris.io import checkpoint
    from jax_iris.quote import clean_path

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
            label = f"{label} ({clean_path(path, 60)})"  # a long path keeps its file name
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


# Grid heatmaps over (learning rate, weight decay), drawn from ``summarize_grid``'s summary.
GRID_SUCCESS_PNG = "success.png"
GRID_PAIRED_PNG = "paired_test_accuracy.png"


def grid_heatmaps(summary: GridSummary) -> dict[str, bytes]:
    """The grid at a glance: {file name: PNG bytes}, from ``sweep_report.summarize_grid``.

    ``success.png``: one panel per (head, arch), the success rate of every
    (lr, weight decay) cell with its 95% Wilson interval, all panels on one 0..1
    colour scale. ``paired_test_accuracy.png`` (when two archs are paired): one panel
    per head, the mean paired test-accuracy difference with its 95% bootstrap
    interval, on one diverging scale symmetric about 0; a star marks the cells whose
    interval excludes 0. The blog's (lr, weight decay), when in the grid, is outlined.
    """
    figures = {GRID_SUCCESS_PNG: _success_heatmap(summary)}
    if summary.paired:
        figures[GRID_PAIRED_PNG] = _paired_heatmap(summary)
    return figures


# A panel's entry: a cell of one (arch, head), or a paired cell of one (a, b, head).
Entry = TypeVar("Entry", "CellSummary", "PairedSummary")


def _grid_axes(entries: Sequence[CellSummary | PairedSummary]) -> tuple[list[float], list[float]]:
    lrs = sorted({e.lr for e in entries})
    wds = sorted({e.weight_decay for e in entries})
    return lrs, wds


def _heatmap_panel(
    ax: Any,
    entries: Sequence[Entry],
    value: Callable[[Entry], float],
    label: Callable[[Entry], tuple[str, str]],
    axes: tuple[list[float], list[float]],
    **imshow: Any,
) -> Any:
    """One panel: x = learning rate, y = weight decay, each cell coloured and annotated."""
    from jax_iris.config import TrainConfig

    lrs, wds = axes
    grid = np.full((len(wds), len(lrs)), np.nan)
    for e in entries:
        grid[wds.index(e.weight_decay), lrs.index(e.lr)] = value(e)
    image = ax.imshow(grid, origin="lower", aspect="auto", **imshow)
    for e in entries:
        x, y = lrs.index(e.lr), wds.index(e.weight_decay)
        r, g, b, _ = image.cmap(image.norm(value(e)))
        colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
        main, detail = label(e)
        ax.text(x, y + 0.1, main, ha="center", va="center", fontsize=11, color=colour)
        ax.text(x, y - 0.22, detail, ha="center", va="center", fontsize=7.5, color=colour)
    blog = TrainConfig()
    if blog.lr in lrs and blog.weight_decay in wds:
        x, y = lrs.index(blog.lr), wds.index(blog.weight_decay)
        ax.add_patch(_outline(x, y))
    ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
    ax.set_yticks(range(len(wds)), [f"{v:g}" for v in wds])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("weight decay")
    return image


def _grid_figure(axes: tuple[list[float], list[float]], rows: int, cols: int) -> Any:
    """A figure for ``rows`` x ``cols`` heatmap panels, each sized to its cells."""
    figure_class, canvas_class = require_matplotlib()
    lrs, wds = axes
    width = max(3.4, 1.05 * len(lrs) + 1.0)
    height = max(2.6, 0.8 * len(wds) + 1.1)
    fig = figure_class(
        figsize=(cols * width + 1.2, rows * height + 0.7), dpi=110, layout="constrained"
    )
    canvas_class(fig)
    return fig


def _suptitle(fig: Any, *lines: str) -> None:
    """A figure title, each line wrapped to the figure's width."""
    import textwrap

    chars = int(fig.get_figwidth() * 13)  # about 13 characters an inch at 10 points
    fig.suptitle("\n".join(textwrap.fill(line, chars) for line in lines), fontsize=10)


def _outline(x: int, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.48, y - 0.48), 0.96, 0.96, fill=False, edgecolor="black", linewidth=2.5)


def _success_heatmap(summary: GridSummary) -> bytes:
    cells = summary.cells
    axes = _grid_axes(cells)
    heads = list(dict.fromkeys(c.head for c in cells))
    archs = list(dict.fromkeys(c.arch for c in cells))
    fig = _grid_figure(axes, len(heads), len(archs))
    image = None
    for row, head in enumerate(heads):
        for col, arch in enumerate(archs):
            ax = fig.add_subplot(len(heads), len(archs), row * len(archs) + col + 1)
            entries = [c for c in cells if c.arch == arch and c.head == head]
            image = _heatmap_panel(
                ax,
                entries,
                lambda c: c.success.rate,
                lambda c: (f"{c.success.rate:.0%}", f"{c.success.low:.0%}-{c.success.high:.0%}"),
                axes,
                cmap="viridis",
                vmin=0.0,
                vmax=1.0,
            )
            ax.set_title(f"{arch}, {head} head")
    threshold = summary.success_threshold
    fig.colorbar(image, ax=fig.axes, label=f"success rate (train accuracy >= {threshold})")
    _suptitle(
        fig,
        f"Share of nets reaching train accuracy >= {threshold}, {cells[0].nets} seeds a cell",
        "(95% Wilson interval below each rate; outlined: the blog's lr and weight decay)",
    )
    return png_bytes(fig)


def _paired_heatmap(summary: GridSummary) -> bytes:
    paired = summary.paired
    axes = _grid_axes(paired)
    panels = list(dict.fromkeys((p.a, p.b, p.head) for p in paired))
    limit = max(abs(v) for p in paired for v in (p.mean_difference, p.low, p.high))
    limit = max(limit, 0.01)
    fig = _grid_figure(axes, 1, len(panels))
    image = None
    for i, (a, b, head) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        entries = [p for p in paired if (p.a, p.b, p.head) == (a, b, head)]
        image = _heatmap_panel(
            ax,
            entries,
            lambda p: p.mean_difference,
            lambda p: (
                f"{p.mean_difference:+.3f}" + ("*" if p.low > 0 or p.high < 0 else ""),
                f"[{p.low:+.3f}, {p.high:+.3f}]",
            ),
            axes,
            cmap="RdBu",
            vmin=-limit,
            vmax=limit,
        )
        ax.set_title(f"{a} - {b}, {head} head")
    fig.colorbar(image, ax=fig.axes, label="mean difference in test accuracy")
    _suptitle(
        fig,
        f"Paired test accuracy, {paired[0].a} minus {paired[0].b} on the same"
        f" {paired[0].n} seeds a cell: mean [95% bootstrap interval]",
        "* interval excludes 0 (one test per cell: expect about 1 in 20 by chance);"
        " outlined: the blog's lr and weight decay",
    )
    return png_bytes(fig)
