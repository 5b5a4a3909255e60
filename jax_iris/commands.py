"""The train and evaluate commands; ``scripts/*.py`` only call these."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jax_iris.cli import (
    Parser,
    UsageError,
    add_config_flags,
    check_writable_dir,
    config_from_args,
    enable_compilation_cache,
    run_main,
)
from jax_iris.models import ARCHS
from jax_iris.train import TrainConfig, TrainResult

DEFAULT_CHECKPOINT_DIR = "checkpoints"
DEFAULT_LOGDIR = "runs"


def train_parser() -> Parser:
    parser = Parser(
        prog="train.py",
        description="Train the blog's iris nets in JAX and print its evaluation table.",
    )
    parser.add_argument(
        "--arch",
        choices=(*ARCHS, "both"),
        default="atten",
        help="network to train; 'both' trains the two and compares them (default: atten)",
    )
    add_config_flags(parser, skip=("arch",))
    parser.add_argument(
        "--checkpoint-dir",
        default=DEFAULT_CHECKPOINT_DIR,
        help="where <arch>.pkl is written (default: %(default)s)",
    )
    parser.add_argument(
        "--logdir", default=DEFAULT_LOGDIR, help="TensorBoard folder (default: %(default)s)"
    )
    parser.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard events")
    return parser


def train_command(argv: Sequence[str] | None = None) -> int:
    """``train.py``: train, evaluate, then write checkpoints and TensorBoard events.

    Nothing is written unless every requested net trained without diverging.
    """
    args = train_parser().parse_args(argv)

    def body() -> int:
        archs = ARCHS if args.arch == "both" else (args.arch,)
        configs = [config_from_args(args, arch=arch) for arch in archs]
        checkpoint_dir = check_writable_dir(args.checkpoint_dir, "--checkpoint-dir")
        logdir = None if args.no_tensorboard else check_writable_dir(args.logdir, "--logdir")
        for arch in archs:
            target = checkpoint_dir / f"{arch}.pkl"
            if target.is_dir():
                raise UsageError(
                    f"cannot write {target}: it is a folder; choose another --checkpoint-dir"
                )
        if logdir is not None:
            for arch in archs:  # events go to <logdir>/<arch>: a file there must fail now
                check_writable_dir(logdir / arch, "--logdir")
        enable_compilation_cache()
        return _train_all(configs, checkpoint_dir, logdir)

    return run_main("train.py", body)


def _train_all(configs: list[TrainConfig], checkpoint_dir: Path, logdir: Path | None) -> int:
    import jax

    from jax_iris import checkpoint
    from jax_iris.data import load_split
    from jax_iris.report import format_table, progress_line, write_tensorboard
    from jax_iris.train import DivergenceError, evaluate, fit

    print(f"device: {jax.devices()[0]} ({jax.default_backend()})")
    results: dict[str, TrainResult] = {}
    tables = {}
    for config in configs:
        split = load_split(config.split_seed)

        def progress(epoch: int, loss: float, acc: float, config: TrainConfig = config) -> None:
            print(progress_line(config.arch, epoch, config.epochs, loss, acc), flush=True)

        try:
            result = fit(config, split=split, progress=progress)
        except DivergenceError as err:
            raise UsageError(
                f"{config.arch}: {err}; try a smaller --lr (was {config.lr:g}). Nothing was written"
            ) from None
        print(
            f"{config.arch:>6}  compile {result.compile_seconds:.2f} s, "
            f"train {result.train_seconds:.3f} s for {config.epochs} epochs"
        )
        results[config.arch] = result
        tables[config.arch] = evaluate(config.arch, result.params, split, config.head)

    print()
    print(format_table(tables))
    print()
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for config in configs:
        result = results[config.arch]
        path = checkpoint_dir / f"{config.arch}.pkl"
        history = result.history._asdict()
        try:
            checkpoint.save(
                path, result.params, config=config, metrics=tables[config.arch], history=history
            )
        except checkpoint.CheckpointError as err:
            raise UsageError(f"{err}; choose another --checkpoint-dir") from None
        print(f"saved {path}")
        if logdir is not None:
            print(
                f"tensorboard events in {write_tensorboard(logdir / config.arch, result.history)}"
            )
    return 0


def evaluate_parser() -> Parser:
    parser = Parser(
        prog="evaluate.py",
        description="Reload jax_iris checkpoints and print the blog's evaluation table.",
    )
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="a .pkl file")
    return parser


def evaluate_command(argv: Sequence[str] | None = None) -> int:
    args = evaluate_parser().parse_args(argv)

    def body() -> int:
        from jax_iris import checkpoint
        from jax_iris.data import load_split
        from jax_iris.report import format_table
        from jax_iris.train import evaluate

        loaded = []
        for path in args.checkpoints:
            try:
                loaded.append((path, checkpoint.load(path)))
            except checkpoint.CheckpointError as err:
                raise UsageError(str(err)) from None
        archs = [ckpt.arch for _, ckpt in loaded]
        tables = {}
        for path, ckpt in loaded:
            label = ckpt.arch if archs.count(ckpt.arch) == 1 else os.path.basename(path)
            split = load_split(ckpt.config.split_seed)
            tables[label] = evaluate(ckpt.arch, ckpt.params, split, ckpt.config.head)
        print(format_table(tables))
        return 0

    return run_main("evaluate.py", body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_command())
