"""``jax-iris train`` (``scripts/train.py``): train the blog's nets and print its table.

Every output (a checkpoint per net, a TensorBoard event file per net) is computed
first and then written all together (``fileio.commit``): a failure or Ctrl-C
leaves every earlier file as it was. Each run is a TensorBoard run of its own,
``<logdir>/<arch>/<run name>``, so a second run never adds points to the first.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from jax_iris import process_life, registry
from jax_iris.cli.common import (
    NOTHING_WRITTEN,
    Interrupted,
    Parser,
    UsageError,
    add_arch_flag,
    add_config_flags,
    check_writable_dir,
    config_from_args,
    enable_compilation_cache,
    run_main,
)
from jax_iris.config import TrainConfig
from jax_iris.quote import clean_path, quote

PROG = "train.py"
DEFAULT_CHECKPOINT_DIR = "checkpoints"
DEFAULT_LOGDIR = "runs"
RUN_NAME_FORMAT = "%Y-%m-%d_%H-%M-%S"  # the default run name: when the command started


def parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Train the blog's iris nets in JAX and print its evaluation table.",
    )
    add_arch_flag(p, default=["atten"])
    add_config_flags(p, TrainConfig, skip=("arch",))
    p.add_argument(
        "--checkpoint-dir",
        default=DEFAULT_CHECKPOINT_DIR,
        help="where <arch>.pkl is written (default: %(default)s)",
    )
    p.add_argument(
        "--logdir",
        default=DEFAULT_LOGDIR,
        help="TensorBoard folder; each run's events go to <logdir>/<arch>/<run name>/"
        " (default: %(default)s)",
    )
    p.add_argument(
        "--run-name",
        help="the TensorBoard run's folder name (default: the start time, e.g."
        " 2025-01-31_14-05-09, with _2, _3, ... added if taken)",
    )
    p.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard events")
    p.add_argument(
        "--baselines",
        action="store_true",
        help="add scikit-learn LogisticRegression, MLPClassifier (10, 20) and the majority"
        " class, fitted on the same split, to the table",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        archs = registry.expand_archs(args.arch)
        configs = [config_from_args(args, arch=arch) for arch in archs]
        checkpoint_dir = check_writable_dir(args.checkpoint_dir, "--checkpoint-dir")
        for arch in archs:
            target = checkpoint_dir / f"{arch}.pkl"
            if target.is_dir() or (target.is_symlink() and not target.exists()):
                what = "a folder" if target.is_dir() else "a dangling symlink"
                raise UsageError(
                    f"cannot write {clean_path(target)}: it is {what};"
                    " choose another --checkpoint-dir"
                )
        runs = None
        if not args.no_tensorboard:
            logdir = check_writable_dir(args.logdir, "--logdir")
            for arch in archs:
                check_writable_dir(logdir / arch, "--logdir")
            name = run_name(logdir, archs, args.run_name)
            runs = {arch: logdir / arch / name for arch in archs}
            for run in runs.values():  # a file in the way must fail now, not after training
                check_writable_dir(run, "--logdir")
        enable_compilation_cache()
        try:
            return train_and_save(configs, checkpoint_dir, runs, with_baselines=args.baselines)
        except registry.PluginError as err:
            raise UsageError(f"{err}; {NOTHING_WRITTEN}") from None

    return run_main(PROG, body)


def run_name(logdir: Path, archs: Sequence[str], given: str | None) -> str:
    """The TensorBoard run folder for this run, new under every ``<logdir>/<arch>``.

    A ``--run-name`` must be one plain folder name not used yet; the default, the
    start time, gets ``_2``, ``_3``, ... when two runs start in the same second.
    """
    if given is not None:
        plain = given not in ("", ".", "..") and not {"/", "\\"} & set(given)
        if not plain or not given.isprintable():
            raise UsageError(f"--run-name must be one folder name, got {quote(given, 60)}")
        taken = [arch for arch in archs if (logdir / arch / given).exists()]
        if taken:
            raise UsageError(
                f"{clean_path(logdir / taken[0] / given)} already holds a run;"
                " choose another --run-name"
            )
        return given
    stamp = datetime.now().strftime(RUN_NAME_FORMAT)
    name, count = stamp, 1
    while any((logdir / arch / name).exists() for arch in archs):
        count += 1
        name = f"{stamp}_{count}"
    return name


def train_and_save(
    configs: list[TrainConfig],
    checkpoint_dir: Path,
    runs: dict[str, Path] | None,
    with_baselines: bool = False,
) -> int:
    """Train each config, print the blog's table, then write every output at once.

    ``runs`` maps each arch to its TensorBoard run folder (None: no events).
    """
    import jax

    from jax_iris.io import checkpoint
    from jax_iris.io.fileio import commit
    from jax_iris.report.tables import format_table, progress_line
    from jax_iris.report.tensorboard import epoch_wall_times, event_file_name, tensorboard_events
    from jax_iris.train import DivergenceError, fit, metrics_dict

    print(f"device: {jax.devices()[0]} ({jax.default_backend()})")
    results, wall_times = {}, {}
    try:
        for config in configs:
            block_ends: list[tuple[int, float]] = []

            def progress(
                epoch: int, loss: float, acc: float, c: TrainConfig = config, ends=block_ends
            ) -> None:
                ends.append((epoch, time.time()))
                print(progress_line(c.arch, epoch, c.epochs, loss, acc), flush=True)

            started = time.time()
            try:
                result = fit(config, progress=progress)
            except DivergenceError as err:
                raise UsageError(
                    f"{config.arch}: {err}; try a smaller --lr (was {config.lr:g})."
                    " Nothing was written"
                ) from None
            print(
                f"{config.arch:>6}  compile {result.compile_seconds:.2f} s, "
                f"train {result.train_seconds:.3f} s for {config.epochs} epochs"
            )
            results[config.arch] = result
            # The first block's compile time is not training time: its epochs start after it.
            first_start = min(started + result.compile_seconds, block_ends[0][1])
            wall_times[config.arch] = epoch_wall_times(config.epochs, first_start, block_ends)

        print()
        columns, note = {arch: r.final for arch, r in results.items()}, ""
        if with_baselines:
            from jax_iris import baselines
            from jax_iris.data import load_split

            extra, note = baselines.for_table(load_split(configs[0].split_seed))
            columns.update(extra)
        print(format_table(columns))
        if note:
            print(note)
        print()
        files = {}
        for config in configs:
            result = results[config.arch]
            files[checkpoint_dir / f"{config.arch}.pkl"] = checkpoint.encode(
                result.params,
                config=config,
                metrics=metrics_dict(result.final),
                history=result.history._asdict(),
            )
            if runs is not None:
                files[runs[config.arch] / event_file_name()] = tensorboard_events(
                    result.history,
                    wall_times[config.arch],
                    hparams=config.to_dict(),
                    final=result.final,
                )
    except BaseException as err:
        if not process_life.is_stop(err):
            raise
        raise Interrupted(NOTHING_WRITTEN) from None
    try:
        written = commit(files)
    except OSError as err:
        raise UsageError(
            f"cannot write the outputs ({err.strerror or err}); nothing was written,"
            " earlier files are as they were"
        ) from None
    for path in written:
        print(f"wrote {clean_path(path)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
