"""``jax-iris evaluate`` (``scripts/evaluate.py``): reload checkpoints, print the blog's table."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jax_iris.cli.common import Parser, UsageError, run_main
from jax_iris.quote import clean_path

PROG = "evaluate.py"


def parser() -> Parser:
    p = Parser(prog=PROG, description="Reload jax_iris checkpoints and print the blog's table.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="a .pkl file")
    return p


def column_labels(paths: Sequence[str], archs: Sequence[str]) -> list[str]:
    """An arch's label where it appears once, else the file path: every column is distinct."""
    from jax_iris import registry

    labels = []
    for path, arch in zip(paths, archs):
        label = registry.label(arch) if archs.count(arch) == 1 else clean_path(path, 60)
        labels.append(label)
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # the same file given twice
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} #{seen[label]}"
    return labels


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        from jax_iris.io import checkpoint
        from jax_iris.report.tables import format_table
        from jax_iris.train import evaluate

        loaded = []
        for path in args.checkpoints:
            try:
                loaded.append(checkpoint.load(path))
            except checkpoint.CheckpointError as err:
                raise UsageError(str(err)) from None
        labels = column_labels(args.checkpoints, [ckpt.arch for ckpt in loaded])
        tables = {label: evaluate(ckpt.config, ckpt.params) for label, ckpt in zip(labels, loaded)}
        print(format_table(tables))
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
