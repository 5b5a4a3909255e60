"""What a sweep or grid shows: per-cell statistics, paired comparisons, a text summary, a CSV.

A *cell* is one (arch, head, lr, weight decay); its nets differ only in their seed
(and split seed). Nets of two archs are paired when they share head, lr, weight
decay, seed and split seed.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np

from jax_iris import baselines
from jax_iris.stats import (
    SUCCESS_ACCURACY,
    mean_interval,
    paired_comparison,
    success_rate,
    summarize,
)
from jax_iris.sweep import GridResult
from jax_iris.train import METRICS, SPLITS

Results = Mapping[tuple[str, str], GridResult]  # (arch, head) -> grid

MULTIPLE_COMPARISONS = (
    "each paired interval is a 95% interval on its own; with many cells some will exclude 0 "
    "by chance (about 1 in 20 when there is no difference), so read the pattern, not one cell"
)


def cell_masks(result: GridResult) -> list[tuple[float, float, np.ndarray]]:
    """``(lr, weight decay, mask over nets)`` for every cell, in grid order.

    The values are the shortest decimals of the float32 values trained with (0.01,
    not 0.009999999776): what the CSV prints, and ``float32(value)`` is exact.
    """
    cells = dict.fromkeys(zip(result.lr.tolist(), result.weight_decay.tolist()))
    return [
        (
            float(float32_text(lr)),
            float(float32_text(wd)),
            (result.lr == lr) & (result.weight_decay == wd),
        )
        for lr, wd in cells
    ]


def _final(result: GridResult, split: str, metric: str) -> np.ndarray:
    return np.asarray(getattr(getattr(result.final, split), metric))


def summarize_grid(results: Results) -> dict[str, Any]:
    """Everything the report prints, as plain JSON-able data."""
    cells = []
    for (arch, head), result in results.items():
        for lr, wd, mask in cell_masks(result):
            test_accuracy = _final(result, "test", "accuracy")[mask]
            train_loss = _final(result, "train", "loss")[mask]
            cells.append(
                {
                    "arch": arch,
                    "head": head,
                    "lr": lr,
                    "weight_decay": wd,
                    "epochs": result.config.epochs,
                    "nets": int(mask.sum()),
                    "vary_split": result.vary_split,
                    "split_seed": None if result.vary_split else result.config.split_seed,
                    "accuracy": {
                        split: summarize(_final(result, split, "accuracy")[mask])._asdict()
                        for split in SPLITS
                    },
                    "success": success_rate(_final(result, "train", "accuracy")[mask])._asdict(),
                    "test_accuracy_mean": mean_interval(test_accuracy)._asdict(),
                    # nets above LogisticRegression's test accuracy on their own split
                    "beats_logistic": baselines.beat_share(
                        test_accuracy, baselines.logistic_test_accuracies(result.split_seeds[mask])
                    )._asdict(),
                    "diverged": int(np.sum(~np.isfinite(train_loss))),
                }
            )
    return {
        "success_threshold": SUCCESS_ACCURACY,
        "cells": cells,
        "paired": paired_cells(results),
        "caveat": MULTIPLE_COMPARISONS,
    }


def paired_cells(results: Results) -> list[dict[str, Any]]:
    """Test accuracy of arch a minus arch b on the same nets' seeds, per (head, lr, wd)."""
    archs = list(dict.fromkeys(arch for arch, _ in results))
    heads = list(dict.fromkeys(head for _, head in results))
    paired = []
    for head in heads:
        for a, b in itertools.combinations(archs, 2):
            if (a, head) not in results or (b, head) not in results:
                continue
            ra, rb = results[(a, head)], results[(b, head)]
            same = (
                np.array_equal(ra.seeds, rb.seeds)
                and np.array_equal(ra.split_seeds, rb.split_seeds)
                and np.array_equal(ra.lr, rb.lr)
                and np.array_equal(ra.weight_decay, rb.weight_decay)
            )
            if not same:
                continue
            for lr, wd, mask in cell_masks(ra):
                comparison = paired_comparison(
                    _final(ra, "test", "accuracy")[mask], _final(rb, "test", "accuracy")[mask]
                )
                paired.append(
                    {
                        "head": head,
                        "lr": lr,
                        "weight_decay": wd,
                        "a": a,
                        "b": b,
                        "metric": "test accuracy",
                        **comparison._asdict(),
                    }
                )
    return paired


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as text: a seed sweep line by line, a grid as (lr x weight decay) tables."""
    if len({(c["lr"], c["weight_decay"]) for c in summary["cells"]}) > 1:
        return format_grid(summary)
    threshold = summary["success_threshold"]
    lines = [
        f"{'arch':<8}{'head':<9}{'lr':>8}{'wd':>8}{'nets':>7}"
        f"  {'success (train acc >= ' + str(threshold) + ')':<36}{'test accuracy (95% CI)':<24}"
        f"  {'beat LogisticRegression on test':<32}"
    ]
    for c in summary["cells"]:
        s, t, b = c["success"], c["test_accuracy_mean"], c["beats_logistic"]
        success = f"{s['rate']:6.1%} ({s['low']:.1%} to {s['high']:.1%})"
        test = f"{t['mean']:.3f} ({t['low']:.3f} to {t['high']:.3f})"
        beats = f"{b['share']:6.1%} ({b['low']:.1%} to {b['high']:.1%})"
        lines.append(
            f"{c['arch']:<8}{c['head']:<9}{c['lr']:>8g}{c['weight_decay']:>8g}{c['nets']:>7}"
            f"  {success:<36}{test:<24}  {beats:<32}"
            + (f"  {c['diverged']} diverged" if c["diverged"] else "")
        )
    if summary["paired"]:
        lines.append("paired on the same seeds and splits, test accuracy a - b:")
        for p in summary["paired"]:
            lines.append(
                f"  {p['a']} - {p['b']}, head {p['head']}, lr {p['lr']:g}, wd {p['weight_decay']:g}"
                f" ({p['n']} pairs): wins {p['wins']:.1%}, ties {p['ties']:.1%},"
                f" losses {p['losses']:.1%}; mean {p['mean_difference']:+.3f}"
                f" (95% CI {p['low']:+.3f} to {p['high']:+.3f})"
            )
        if len(summary["paired"]) > 1:
            lines.append(f"  note: {summary['caveat']}")
    return "\n".join(lines)


CSV_COLUMNS = (
    "arch",
    "head",
    "lr",
    "weight_decay",
    "epochs",
    "seed",
    "split_seed",
    *(f"{split}_{metric}" for split in SPLITS for metric in METRICS),
    "success",
)


def float32_text(value: float) -> str:
    """The shortest decimal that reads back as this float32 value: exact, not rounded."""
    return str(np.float32(value))


def csv_text(results: Results) -> str:
    """One row per net (tidy), every cell of every (arch, head); values exact (float32)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for (arch, head), result in results.items():
        values = [_final(result, split, metric) for split in SPLITS for metric in METRICS]
        success = _final(result, "train", "accuracy") >= SUCCESS_ACCURACY - 1e-6
        for i in range(len(result.seeds)):
            writer.writerow(
                [arch, head, float32_text(result.lr[i]), float32_text(result.weight_decay[i])]
                + [result.config.epochs, int(result.seeds[i]), int(result.split_seeds[i])]
                + [float32_text(v[i]) for v in values]
                + [int(success[i])]
            )
    return buffer.getvalue()


def format_grid(summary: dict[str, Any]) -> str:
    """A grid as tables, weight decays down and learning rates across.

    Per (arch, head): success rate / mean test accuracy of each cell. Per paired
    (head, a, b): the mean test-accuracy difference a - b with its 95% interval, a
    star where the interval excludes 0. Intervals of the cells are in the JSON.
    """
    cells, paired = summary["cells"], summary["paired"]
    lrs = sorted({c["lr"] for c in cells})
    wds = sorted({c["weight_decay"] for c in cells})

    def table(title: str, entries: list[dict[str, Any]], text: Any, width: int) -> list[str]:
        by_cell = {(e["lr"], e["weight_decay"]): e for e in entries}
        rows = [title, "wd \\ lr".rjust(8) + "".join(f"{lr:>{width}g}" for lr in lrs)]
        for wd in wds:
            row = [text(by_cell[(lr, wd)]) if (lr, wd) in by_cell else "-" for lr in lrs]
            rows.append(f"{wd:>8g}" + "".join(f"{t:>{width}}" for t in row))
        return rows

    lines = []
    for arch, head in dict.fromkeys((c["arch"], c["head"]) for c in cells):
        entries = [c for c in cells if (c["arch"], c["head"]) == (arch, head)]
        title = (
            f"{arch}, {head}: success (train accuracy >= {summary['success_threshold']})"
            f" / mean test accuracy, {entries[0]['nets']} nets a cell"
        )
        lines += table(
            title,
            entries,
            lambda c: f"{c['success']['rate']:.1%} / {c['test_accuracy_mean']['mean']:.3f}",
            17,
        )
        diverged = [c for c in entries if c["diverged"]]
        for c in diverged:
            lines.append(
                f"  lr {c['lr']:g}, wd {c['weight_decay']:g}: {c['diverged']} nets diverged"
            )
        lines.append("")
    for a, b, head in dict.fromkeys((p["a"], p["b"], p["head"]) for p in paired):
        entries = [p for p in paired if (p["a"], p["b"], p["head"]) == (a, b, head)]
        title = (
            f"{a} - {b}, {head}: mean paired test-accuracy difference [95% CI],"
            f" {entries[0]['n']} pairs a cell (* the CI excludes 0)"
        )
        lines += table(title, entries, _paired_text, 26)
        lines.append("")
    if paired:
        lines.append(f"note: {summary['caveat']}")
    return "\n".join(lines).rstrip("\n")


def _paired_text(p: dict[str, Any]) -> str:
    star = "*" if p["low"] > 0 or p["high"] < 0 else " "
    return f"{p['mean_difference']:+.3f}{star}[{p['low']:+.3f},{p['high']:+.3f}]"
