"""``sweep.py``: train many seeds per arch and say, with statistics, which net really wins."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jax_iris.cli import (
    Parser,
    UsageError,
    add_config_flags,
    check_writable_dir,
    config_from_args,
    enable_compilation_cache,
    run_main,
    use_host_devices,
)
from jax_iris.fileio import atomic_write, atomic_write_text
from jax_iris.models import ARCHS
from jax_iris.stats import (
    SUCCESS_ACCURACY,
    paired_comparison,
    success_rate,
    summarize,
)
from jax_iris.sweep import DEFAULT_CHUNK_SIZE, METRICS, SPLITS, SweepResult

CSV_NAME = "sweep.csv"
JSON_NAME = "summary.json"
PNG_NAME = "accuracy.png"


def sweep_parser() -> Parser:
    parser = Parser(
        prog="sweep.py",
        description="Train many initial-weight seeds per arch in one compiled program.",
    )
    parser.add_argument(
        "--arch",
        nargs="+",
        choices=ARCHS,
        default=list(ARCHS),
        help="nets to sweep (default: both)",
    )
    parser.add_argument("--seeds", type=int, default=1000, help="nets per arch: seeds 0..N-1")
    parser.add_argument(
        "--vary-split", action="store_true", help="net i also gets its own data split (seed i)"
    )
    add_config_flags(parser, skip=("arch", "seed", "log_every"))
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="nets per compiled call"
    )
    parser.add_argument("--out", default="results", help="folder for CSV, JSON and PNG")
    parser.add_argument(
        "--host-devices",
        type=int,
        default=os.cpu_count() or 1,
        help="on CPU, run the sweep as this many XLA devices (default: %(default)s, one a core)",
    )
    return parser


def sweep_command(argv: Sequence[str] | None = None) -> int:
    args = sweep_parser().parse_args(argv)

    def body() -> int:
        if args.seeds < 1:
            raise UsageError(f"--seeds must be a positive integer, got {args.seeds}")
        if args.chunk_size < 1:
            raise UsageError(f"--chunk-size must be a positive integer, got {args.chunk_size}")
        if args.host_devices < 1:
            raise UsageError(f"--host-devices must be a positive integer, got {args.host_devices}")
        archs = list(dict.fromkeys(args.arch))
        configs = {arch: config_from_args(args, arch=arch, seed=0, log_every=1) for arch in archs}
        out = check_writable_dir(args.out, "--out")
        use_host_devices(args.host_devices)
        enable_compilation_cache()
        return _run(configs, args, out)

    return run_main("sweep.py", body)


def _run(configs: dict, args, out: Path) -> int:
    import time

    import jax

    from jax_iris.sweep import progress_bar, train_seeds

    seeds = np.arange(args.seeds)
    split_seeds = seeds if args.vary_split else None
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")
    results = {}
    for arch, config in configs.items():
        start = time.perf_counter()
        results[arch] = train_seeds(
            config, seeds, split_seeds, chunk_size=args.chunk_size, progress=progress_bar
        )
        seconds = time.perf_counter() - start
        print(f"{arch}: {len(seeds)} nets x {config.epochs} epochs in {seconds:.1f} s")
        diverged = int(np.sum(~np.isfinite(results[arch].final["train"]["loss"])))
        if diverged == len(seeds):
            raise UsageError(
                f"{arch}: every net diverged (non-finite loss); try a smaller --lr"
                f" (was {config.lr:g}). Nothing was written"
            )
        if diverged:
            print(f"{arch}: {diverged} of {len(seeds)} nets diverged (non-finite loss)")
    summary = summarize_sweep(results, configs)
    print()
    print(format_summary(summary))
    out.mkdir(parents=True, exist_ok=True)
    written = [
        atomic_write_text(out / CSV_NAME, _csv_text(results, configs)),
        atomic_write_text(out / JSON_NAME, json.dumps(summary, indent=2) + "\n"),
    ]
    png = plot_sweep(results, out / PNG_NAME)
    if png is not None:
        written.append(png)
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


def summarize_sweep(results: dict[str, SweepResult], configs: dict) -> dict:
    """Everything the report prints, as plain JSON-able data."""
    summary: dict = {"archs": {}, "paired": None}
    for arch, result in results.items():
        config = configs[arch]
        per_split = {
            split: summarize(result.final[split]["accuracy"])._asdict() for split in SPLITS
        }
        summary["archs"][arch] = {
            "config": dataclasses.asdict(config),
            "nets": len(result.seeds),
            "vary_split": result.vary_split,
            "accuracy": per_split,
            "success": success_rate(result.final["train"]["accuracy"])._asdict(),
            "diverged": int(np.sum(~np.isfinite(result.final["train"]["loss"]))),
        }
    if "atten" in results and "linear" in results:
        comparison = paired_comparison(
            results["atten"].final["test"]["accuracy"], results["linear"].final["test"]["accuracy"]
        )
        summary["paired"] = {"metric": "test accuracy", **comparison._asdict()}
    return summary


def format_summary(summary: dict) -> str:
    lines = []
    for arch, s in summary["archs"].items():
        config = s["config"]
        lines.append(
            f"{arch}: {s['nets']} nets, head {config['head']}, {config['epochs']} epochs"
            + (", a split per net" if s["vary_split"] else f", split seed {config['split_seed']}")
        )
        lines.append(f"  {'accuracy':<8} {'mean +- std':>15} {'median':>7} {'min':>6} {'max':>6}")
        for split, a in s["accuracy"].items():
            lines.append(
                f"  {split:<8} {a['mean']:>7.3f} +- {a['std']:.3f} {a['median']:>7.3f}"
                f" {a['min']:>6.3f} {a['max']:>6.3f}"
            )
        p = s["success"]
        lines.append(
            f"  success (train accuracy >= {SUCCESS_ACCURACY}): {p['successes']}/{p['n']}"
            f" = {p['rate']:.1%} (95% CI {p['low']:.1%} to {p['high']:.1%})"
        )
    paired = summary["paired"]
    if paired:
        lines.append(
            f"paired on the same seeds and splits ({paired['n']} pairs), test accuracy:"
            f" atten wins {paired['wins']:.1%}, ties {paired['ties']:.1%},"
            f" loses {paired['losses']:.1%}; mean difference {paired['mean_difference']:+.3f}"
            f" (bootstrap 95% CI {paired['low']:+.3f} to {paired['high']:+.3f})"
        )
    return "\n".join(lines)


def _csv_text(results: dict[str, SweepResult], configs: dict) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    metric_columns = [f"{split}_{metric}" for split in SPLITS for metric in METRICS]
    writer.writerow(["arch", "head", "seed", "split_seed", *metric_columns, "success"])
    for arch, result in results.items():
        for i, seed in enumerate(result.seeds):
            values = [result.final[split][metric][i] for split in SPLITS for metric in METRICS]
            success = result.final["train"]["accuracy"][i] >= SUCCESS_ACCURACY - 1e-6
            writer.writerow(
                [arch, configs[arch].head, int(seed), int(result.split_seeds[i])]
                + [f"{v:.6f}" for v in values]
                + [int(success)]
            )
    return buffer.getvalue()


def plot_sweep(results: dict[str, SweepResult], path: Path) -> Path | None:
    """Histograms of final accuracy per split, one colour per arch. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'jax-iris[plot]')")
        return None
    from jax_iris.data import load_split

    sizes = {split: len(part.y) for split, part in zip(SPLITS, load_split())}
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(13, 4))
    for ax, split in zip(axes, SPLITS):
        n = sizes[split]
        bins = np.linspace(-0.5 / n, 1 + 0.5 / n, n + 2)  # one bin per attainable accuracy k/n
        for arch, result in results.items():
            acc = result.final[split]["accuracy"]
            ax.hist(acc, bins=bins, alpha=0.6, label=f"{arch} ({len(acc)} nets)")
        ax.set_title(f"{split} accuracy after training")
        ax.set_xlabel("accuracy")
        ax.set_ylabel("nets")
        ax.legend()
    fig.suptitle("Final accuracy over initial-weight seeds")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
