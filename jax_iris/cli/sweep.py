"""``jax-iris sweep`` (``scripts/sweep.py``): many seeds (and learning rates, weight decays)
per arch and head, with statistics that say which net really wins.

Outputs, all written together at the end (``fileio.commit``): ``sweep.csv`` (one row
per net) and ``summary.json`` (per cell and paired statistics); for a seed sweep (one
cell) ``accuracy.png``, the final-accuracy histograms; for a grid (several
(lr, weight decay) cells) the heatmaps ``success.png`` and ``paired_test_accuracy.png``
and, unless ``--no-tensorboard``, TensorBoard HParams runs under ``tensorboard/``, one
per cell (``tensorboard --logdir <out>/tensorboard``, HPARAMS tab).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from jax_iris.cli.common import (
    NOTHING_WRITTEN,
    Interrupted,
    Parser,
    UsageError,
    add_arch_flag,
    add_config_flags,
    build_config,
    check_writable_dir,
    config_from_args,
    enable_compilation_cache,
    run_main,
    use_host_devices,
)
from jax_iris.cli.distributed import (
    add_distributed_flags,
    check_distributed_args,
    followers_stop,
    run_distributed,
)
from jax_iris.config import SweepConfig, TrainConfig
from jax_iris.quote import clean_path

PROG = "sweep.py"
CSV_NAME = "sweep.csv"
JSON_NAME = "summary.json"
PNG_NAME = "accuracy.png"
TENSORBOARD_DIR = "tensorboard"


def parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Train many seeds (x learning rates x weight decays) per arch and head "
        "in one compiled program each, and compare the nets with statistics.",
    )
    add_arch_flag(p, default=SweepConfig.arch)
    add_config_flags(p, SweepConfig, skip=("arch",))
    add_config_flags(
        p, TrainConfig, skip=("arch", "head", "seed", "lr", "weight_decay", "log_every")
    )
    p.add_argument(
        "--out", default="results", help="folder for CSV, JSON and PNG (default: results)"
    )
    p.add_argument(
        "--no-tensorboard",
        action="store_true",
        help=f"for a grid, do not write TensorBoard HParams runs to OUT/{TENSORBOARD_DIR}",
    )
    p.add_argument(
        "--host-devices",
        type=int,
        default=os.cpu_count() or 1,
        help="on CPU, run the sweep as this many XLA devices (default: %(default)s, one a core)",
    )
    add_distributed_flags(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        sweep = build_config(
            SweepConfig, {name: getattr(args, name) for name in SweepConfig.__dataclass_fields__}
        )
        # lr and weight decay are lists here (the sweep's); the base config takes the first.
        first = {"lr": sweep.lr[0], "weight_decay": sweep.weight_decay[0]}
        base = config_from_args(
            args, arch=sweep.arch[0], head=sweep.head[0], seed=0, log_every=1, **first
        )
        if not 1 <= args.host_devices <= 1024:
            raise UsageError(f"--host-devices must be from 1 to 1024, got {args.host_devices}")
        out = check_writable_dir(args.out, "--out")
        plan = check_distributed_args(args)
        use_host_devices(args.host_devices)

        def work() -> int:
            enable_compilation_cache()
            return run_sweep(sweep, base, out, tensorboard=not args.no_tensorboard)

        return run_distributed(PROG, plan, work)

    return run_main(PROG, body)


def run_sweep(sweep: SweepConfig, base: TrainConfig, out: Path, tensorboard: bool = True) -> int:
    import dataclasses

    import jax
    import numpy as np

    from jax_iris.fileio import commit
    from jax_iris.progress import Progress
    from jax_iris.sweep import DEFAULT_GROUP_SIZE, train_grid
    from jax_iris.sweep_report import csv_text, format_summary, summarize_grid

    seeds = np.arange(sweep.seeds)
    split_seeds = seeds if sweep.vary_split else None
    runs = [(arch, head) for arch in sweep.arch for head in sweep.head]
    cells = len(sweep.lr) * len(sweep.weight_decay)
    print(
        f"devices: {jax.device_count()} x {jax.devices()[0].platform}; {len(runs)} (arch, head)"
        f" x {cells} cells x {sweep.seeds} seeds = {len(runs) * sweep.nets_per_run:,} nets"
    )
    results = {}
    try:
        for arch, head in runs:
            config = dataclasses.replace(base, arch=arch, head=head)
            per_cell = sweep.seeds
            with Progress(
                sweep.nets_per_run,
                f"{arch}, {head}",
                "nets",
                extra=lambda done, k=per_cell, c=cells: f"{done // k}/{c} cells",
            ) as bar:
                start = time.perf_counter()
                result = train_grid(
                    config,
                    seeds,
                    sweep.lr,
                    sweep.weight_decay,
                    split_seeds,
                    chunk_size=sweep.chunk_size,
                    group_size=sweep.group_size or DEFAULT_GROUP_SIZE,
                    progress=lambda done, _total: bar.update(done),
                )
                seconds = time.perf_counter() - start
            n = len(result.seeds)
            print(f"{arch}, {head}: {n:,} nets x {config.epochs} epochs in {seconds:.1f} s")
            diverged = int(np.sum(~np.isfinite(np.asarray(result.final.train.loss))))
            if diverged == n:
                raise UsageError(
                    f"{arch}, {head}: every net diverged (non-finite loss); try smaller --lr"
                    " values. Nothing was written"
                )
            if diverged:
                print(f"{arch}, {head}: {diverged} of {n} nets diverged (non-finite loss)")
            results[(arch, head)] = result
        if followers_stop(out):  # across processes, process 0 alone summarises and writes
            return 0
        summary = summarize_grid(results)
        summary["sweep"] = sweep.to_dict()
        print()
        print(format_summary(summary))
        files = {
            out / CSV_NAME: csv_text(results).encode(),
            out / JSON_NAME: (json.dumps(summary, indent=2) + "\n").encode(),
        }
        files.update(figures(results, summary, out))
        if tensorboard and cells > 1:
            files.update(hparams_files(summary, out))
        check_targets(files, out)
    except KeyboardInterrupt:
        raise Interrupted(NOTHING_WRITTEN) from None
    try:
        written = commit(files)
    except OSError as err:
        raise UsageError(
            f"cannot write to {clean_path(out)} ({err.strerror or err}); nothing was"
            " written, earlier files are as they were; choose another --out"
        ) from None
    print("\nwrote " + written_summary(written, out))
    return 0


def written_summary(written: list[Path], out: Path) -> str:
    """The files written, with the TensorBoard runs counted rather than listed."""
    board = out / TENSORBOARD_DIR
    runs = [p for p in written if board in p.parents]
    shown = [clean_path(p) for p in written if p not in runs]
    if runs:
        shown.append(f"{clean_path(board)}/ ({len(runs) - 1} HParams runs, one a cell)")
    return ", ".join(shown)


def figures(results: dict, summary: dict, out: Path) -> dict[Path, bytes]:
    """The PNGs: histograms for a seed sweep, heatmaps for a grid; none (with one line)
    when matplotlib is missing."""
    from jax_iris.plots import (
        INSTALL_HINT,
        PlotError,
        grid_heatmaps,
        require_matplotlib,
        sweep_histograms,
    )

    try:
        require_matplotlib()
    except PlotError:
        print(f"no figures: {INSTALL_HINT}")
        return {}
    cells = {(c["lr"], c["weight_decay"]) for c in summary["cells"]}
    if len(cells) == 1:
        return {out / PNG_NAME: sweep_histograms(results)}
    return {out / name: png for name, png in grid_heatmaps(summary).items()}


def hparams_files(summary: dict, out: Path) -> dict[Path, bytes]:
    """One TensorBoard run per cell under ``out/tensorboard``, the experiment at its top.

    The event files have a fixed name, so running the same grid again replaces them.
    """
    from jax_iris.report import HPARAMS_EVENTS_NAME, hparams_events

    root = out / TENSORBOARD_DIR
    return {
        root / run / HPARAMS_EVENTS_NAME: data
        for run, data in hparams_events(summary["cells"]).items()
    }


def check_targets(files: dict[Path, bytes], out: Path) -> None:
    """Refuse, before anything is written, a target taken by something not a file.

    A rename onto a folder fails only after the files before it were renamed, so
    it is caught here, while nothing has changed.
    """
    for path in files:
        for place in (path, *path.parents):
            if place == out.parent:
                break
            taken = place.is_dir() if place == path else place.exists() and not place.is_dir()
            if taken or place.is_symlink() and not place.exists():
                raise UsageError(
                    f"cannot write {clean_path(path)}: {clean_path(place)} is in the way"
                    f" (a {'folder' if place.is_dir() else 'file or dangling link'}); nothing"
                    " was written, earlier files are as they were; move it or choose another --out"
                )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
