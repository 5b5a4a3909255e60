"""What a sweep or grid shows: per-cell statistics, paired comparisons, a text summary, a CSV.

The summary is a ``GridSummary`` record (``CellSummary`` and ``PairedSummary`` within
it), read by attribute; ``GridSummary.to_dict`` is how ``summary.json`` begins.

A *cell* is one (arch, head, lr, weight decay); its nets differ only in their seed
(and split seed). Nets of two archs are paired when they share head, lr, weight
decay, seed and split seed.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

import numpy as np

from jax_iris import baselines
from jax_iris.baselines import BeatShare
from jax_iris.stats import (
    SUCCESS_ACCURACY,
    Interval,
    Proportion,
    Summary,
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


class SplitSummaries(NamedTuple):
    """A summary of each split's final accuracy, in ``SPLITS`` order."""

    train: Summary
    val: Summary
    test: Summary


class CellSummary(NamedTuple):
    """One cell's nets: what they were trained with and how they ended."""

    arch: str
    head: str
    lr: float  # the shortest decimal of the float32 trained with (``cell_masks``)
    weight_decay: float
    epochs: int
    nets: int
    vary_split: bool
    split_seed: int | None  # None when each net had its own split
    accuracy: SplitSummaries  # final accuracy over the nets
    success: Proportion  # nets with train accuracy >= SUCCESS_ACCURACY
    test_accuracy_mean: Interval
    beats_logistic: BeatShare  # nets above LogisticRegression's test accuracy on their split
    diverged: int  # nets whose final train loss is not finite


class PairedSummary(NamedTuple):
    """Arch ``a`` minus arch ``b`` on the same seeds and splits, in one (head, lr, wd) cell.

    The last seven fields are ``stats.PairedComparison``'s, in its order.
    """

    head: str
    lr: float
    weight_decay: float
    a: str
    b: str
    metric: str  # "test accuracy"
    n: int
    wins: float
    ties: float
    losses: float
    mean_difference: float
    low: float
    high: float


class GridSummary(NamedTuple):
    """Everything the report prints and ``summary.json`` holds of the nets."""

    success_threshold: float
    cells: tuple[CellSummary, ...]
    paired: tuple[PairedSummary, ...]
    caveat: str

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON data, keys in field order: the start of ``summary.json``."""
        return _plain(self)


def _plain(value: Any) -> Any:
    """Records as dicts (keys in field order), tuples as lists, all the way down."""
    if hasattr(value, "_asdict"):
        return {name: _plain(field) for name, field in value._asdict().items()}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


def summarize_grid(results: Results) -> GridSummary:
    """Everything the report prints: every cell, every paired comparison."""
    cells = []
    for (arch, head), result in results.items():
        for lr, wd, mask in cell_masks(result):
            test_accuracy = _final(result, "test", "accuracy")[mask]
            train_loss = _final(result, "train", "loss")[mask]
            cells.append(
                CellSummary(
                    arch=arch,
                    head=head,
                    lr=lr,
                    weight_decay=wd,
                    epochs=result.config.epochs,
                    nets=int(mask.sum()),
                    vary_split=result.vary_split,
                    split_seed=None if result.vary_split else result.config.split_seed,
                    accuracy=SplitSummaries(
                        **{
                            split: summarize(_final(result, split, "accuracy")[mask])
                            for split in SPLITS
                        }
                    ),
                    success=success_rate(_final(result, "train", "accuracy")[mask]),
                    test_accuracy_mean=mean_interval(test_accuracy),
                    beats_logistic=baselines.beat_share(
                        test_accuracy, baselines.logistic_test_accuracies(result.split_seeds[mask])
                    ),
                    diverged=int(np.sum(~np.isfinite(train_loss))),
                )
            )
    return GridSummary(
        success_threshold=SUCCESS_ACCURACY,
        cells=tuple(cells),
        paired=paired_cells(results),
        caveat=MULTIPLE_COMPARISONS,
    )


def paired_cells(results: Results) -> tuple[PairedSummary, ...]:
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
                    PairedSummary(
                        head=head,
                        lr=lr,
                        weight_decay=wd,
                        a=a,
                        b=b,
                        metric="test accuracy",
                        **comparison._asdict(),
                    )
                )
    return tuple(paired)


def format_summary(summary: GridSummary) -> str:
    """The summary as text: a seed sweep line by line, a grid as (lr x weight decay) tables."""
    if len({(c.lr, c.weight_decay) for c in summary.cells}) > 1:
        return format_grid(summary)
    threshold = summary.success_threshold
    lines = [
        f"{'arch':<8}{'head':<9}{'lr':>8}{'wd':>8}{'nets':>7}"
        f"  {'success (train acc >= ' + str(threshold) + ')':<36}{'test accuracy (95% CI)':<24}"
        f"  {'beat LogisticRegression on test':<32}"
    ]
    for c in summary.cells:
        s, t, b = c.success, c.test_accuracy_mean, c.beats_logistic
        success = f"{s.rate:6.1%} ({s.low:.1%} to {s.high:.1%})"
        test = f"{t.mean:.3f} ({t.low:.3f} to {t.high:.3f})"
        beats = f"{b.share:6.1%} ({b.low:.1%} to {b.high:.1%})"
        lines.append(
            f"{c.arch:<8}{c.head:<9}{c.lr:>8g}{c.weight_decay:>8g}{c.nets:>7}"
            f"  {success:<36}{test:<24}  {beats:<32}"
            + (f"  {c.diverged} diverged" if c.diverged else "")
        )
    if summary.paired:
        lines.append("paired on the same seeds and splits, test accuracy a - b:")
        for p in summary.paired:
            lines.append(
                f"  {p.a} - {p.b}, head {p.head}, lr {p.lr:g}, wd {p.weight_decay:g}"
                f" ({p.n} pairs): wins {p.wins:.1%}, ties {p.ties:.1%},"
                f" losses {p.losses:.1%}; mean {p.mean_difference:+.3f}"
                f" (95% CI {p.low:+.3f} to {p.high:+.3f})"
            )
        if len(summary.paired) > 1:
            lines.append(f"  note: {summary.caveat}")
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


Entry = TypeVar("Entry", CellSummary, PairedSummary)  # a table's entry: one a cell


def format_grid(summary: GridSummary) -> str:
    """A grid as tables, weight decays down and learning rates across.

    Per (arch, head): success rate / mean test accuracy of each cell. Per paired
    (head, a, b): the mean test-accuracy difference a - b with its 95% interval, a
    star where the interval excludes 0. Intervals of the cells are in the JSON.
    """
    cells, paired = summary.cells, summary.paired
    lrs = sorted({c.lr for c in cells})
    wds = sorted({c.weight_decay for c in cells})

    def table(
        title: str, entries: list[Entry], text: Callable[[Entry], str], width: int
    ) -> list[str]:
        by_cell = {(e.lr, e.weight_decay): e for e in entries}
        rows = [title, "wd \\ lr".rjust(8) + "".join(f"{lr:>{width}g}" for lr in lrs)]
        for wd in wds:
            row = [text(by_cell[(lr, wd)]) if (lr, wd) in by_cell else "-" for lr in lrs]
            rows.append(f"{wd:>8g}" + "".join(f"{t:>{width}}" for t in row))
        return rows

    lines = []
    for arch, head in dict.fromkeys((c.arch, c.head) for c in cells):
        entries = [c for c in cells if (c.arch, c.head) == (arch, head)]
        title = (
            f"{arch}, {head}: success (train accuracy >= {summary.success_threshold})"
            f" / mean test accuracy, {entries[0].nets} nets a cell"
        )
        lines += table(
            title,
            entries,
            lambda c: f"{c.success.rate:.1%} / {c.test_accuracy_mean.mean:.3f}",
            17,
        )
        for c in entries:
            if c.diverged:
                lines.append(f"  lr {c.lr:g}, wd {c.weight_decay:g}: {c.diverged} nets diverged")
        lines.append("")
    for a, b, head in dict.fromkeys((p.a, p.b, p.head) for p in paired):
        entries = [p for p in paired if (p.a, p.b, p.head) == (a, b, head)]
        title = (
            f"{a} - {b}, {head}: mean paired test-accuracy difference [95% CI],"
            f" {entries[0].n} pairs a cell (* the CI excludes 0)"
        )
        lines += table(title, entries, _paired_text, 26)
        lines.append("")
    if paired:
        lines.append(f"note: {summary.caveat}")
    return "\n".join(lines).rstrip("\n")


def _paired_text(p: PairedSummary) -> str:
    star = "*" if p.low > 0 or p.high < 0 else " "
    return f"{p.mean_difference:+.3f}{star}[{p.low:+.3f},{p.high:+.3f}]"
