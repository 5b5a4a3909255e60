"""Does a grid train as fast as a seed sweep of the same size? Both timed side by side.

A grid of ``nets`` nets spreads them over ``GRID_LR`` x ``GRID_WEIGHT_DECAY`` cells
(``nets / 12`` seeds a cell); the seed sweep trains ``nets`` seeds at the blog's
single (lr, weight decay). Both go through ``train_grid``, so both run the same
compiled program on chunks of the same shape: what could differ is the per-net
hyperparameter data and the bookkeeping of cells. Each is run once untimed (it
compiles), then timed ``repeats`` times, alternating which goes first so that a
change in the machine's load falls on both; medians and best times are kept.
"""

from __future__ import annotations

import statistics
import time
from typing import NamedTuple

import numpy as np

from jax_iris.config import TrainConfig
from jax_iris.sweep import train_grid, train_seeds

GRID_LR = (0.001, 0.005, 0.02, 0.05)
GRID_WEIGHT_DECAY = (0.0, 1e-3, 1e-2)
CELLS = len(GRID_LR) * len(GRID_WEIGHT_DECAY)


class GridBench(NamedTuple):
    arch: str
    head: str
    nets: int
    epochs: int
    grid_seconds: float  # median wall time of one grid, compiled beforehand
    sweep_seconds: float  # median wall time of one seed sweep of as many nets
    grid_nets_per_second: float  # from the medians
    sweep_nets_per_second: float
    grid_best_seconds: float  # the fastest run of each: what a busy machine distorts least
    sweep_best_seconds: float

    @property
    def ratio(self) -> float:
        """Grid speed over seed-sweep speed: 1.0 means the same nets per second."""
        return self.grid_nets_per_second / self.sweep_nets_per_second


def grid_vs_seed_sweep(
    arch: str = "atten",
    nets: int = 1200,
    epochs: int = 200,
    head: str = "sigmoid",
    repeats: int = 3,
) -> GridBench:
    """Nets per second of a ``GRID_LR`` x ``GRID_WEIGHT_DECAY`` grid and of a seed sweep.

    ``nets`` must be a positive multiple of the 12 cells.
    """
    if nets < CELLS or nets % CELLS:
        raise ValueError(f"nets must be a positive multiple of {CELLS}, got {nets}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    config = TrainConfig(arch=arch, head=head, epochs=epochs)
    runs = {
        "grid": lambda: train_grid(config, np.arange(nets // CELLS), GRID_LR, GRID_WEIGHT_DECAY),
        "sweep": lambda: train_seeds(config, np.arange(nets)),
    }
    for run in runs.values():
        run()  # compiles
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats):
        for name in sorted(runs, reverse=bool(i % 2)):
            start = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - start)
    grid, sweep = (statistics.median(seconds[name]) for name in ("grid", "sweep"))
    return GridBench(
        arch,
        head,
        nets,
        epochs,
        grid,
        sweep,
        nets / grid,
        nets / sweep,
        min(seconds["grid"]),
        min(seconds["sweep"]),
    )


def format_bench(result: GridBench) -> str:
    return (
        f"{result.arch}, {result.head}, {result.nets} nets x {result.epochs} epochs:"
        f" grid ({len(GRID_LR)} lr x {len(GRID_WEIGHT_DECAY)} wd x {result.nets // CELLS}"
        f" seeds) {result.grid_seconds:.2f} s = {result.grid_nets_per_second:,.1f} nets/s;"
        f" seed sweep {result.sweep_seconds:.2f} s = {result.sweep_nets_per_second:,.1f} nets/s;"
        f" grid / sweep {result.ratio:.2f} (best runs {result.grid_best_seconds:.2f} s and"
        f" {result.sweep_best_seconds:.2f} s)"
    )
