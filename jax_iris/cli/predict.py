"""``jax-iris predict`` (``scripts/predict.py``): classify flowers with trained checkpoints.

Every input row is checked and every net run before anything is printed: a bad row
or checkpoint is one line on stderr, exit 2, and nothing on stdout.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from jax_iris.cli.common import Parser, UsageError, run_main
from jax_iris.quote import clean_path
from jax_iris.rows import FEATURES, MAX_INPUT_BYTES, MAX_ROWS, SPECIES, STDIN

PROG = "predict.py"
FORMATS = ("table", "csv", "json")
PROBABILITIES = (
    "softmax of the net's outputs, the distribution its cross-entropy loss trains; with the"
    " blog's sigmoid head that is a softmax over sigmoids in (0, 1), which never exceeds"
    " e/(e+2) = 0.576: a ranking, not a calibrated confidence"
)

TABLE_NOTE = "P = softmax of each net's outputs; with the sigmoid head at most 0.576 (see --help)"
DESCRIPTION = "\n\n".join(
    textwrap.fill(paragraph, 88)
    for paragraph in (
        "Classify iris flowers with one or more jax_iris checkpoints: the species and the three"
        f" class probabilities ({', '.join(SPECIES)}) of each row, one column per checkpoint.",
        f"Rows are four numbers in cm, in the order {', '.join(FEATURES)}. Give them with --row"
        f" (repeat it), or as a CSV file with --input FILE ({STDIN!r} reads stdin), with or"
        " without a header; a header names the columns in any order (scikit-learn's"
        " 'sepal length (cm)', or 'sepal_length', 'Sepal.Length'). At most"
        f" {MAX_ROWS:,} rows and {MAX_INPUT_BYTES:,} bytes of input.",
        f"Probabilities: {PROBABILITIES}.",
    )
)


def parser() -> Parser:
    p = Parser(
        prog=PROG, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="a .pkl file")
    p.add_argument(
        "--row",
        action="append",
        default=[],
        metavar="SL,SW,PL,PW",
        help="one flower, e.g. --row 5.1,3.5,1.4,0.2 (repeat for more rows)",
    )
    p.add_argument("--input", metavar="FILE", help=f"a CSV of rows; {STDIN!r} reads stdin")
    p.add_argument("--format", choices=FORMATS, default="table", help="(default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        if bool(args.row) == (args.input is not None):
            raise UsageError(
                "give the rows either with --row (one or more) or with --input FILE.csv"
                f" ({STDIN!r} for stdin), not both"
                if args.row
                else "no rows: give --row 5.1,3.5,1.4,0.2 or --input FILE.csv ('-' for stdin)"
            )
        from jax_iris import rows

        try:
            if args.row:
                table = rows.from_arguments(args.row)
            else:
                name = "stdin" if args.input == STDIN else clean_path(args.input)
                table = rows.from_csv(rows.read_bounded(args.input), name)
        except rows.RowError as err:
            raise UsageError(str(err)) from None
        results = predict_all(args.checkpoints, table)
        print(FORMATTERS[args.format](table, results), end="")
        return 0

    return run_main(PROG, body)


def predict_all(paths: Sequence[str], table: Any) -> dict[str, tuple[Any, Any]]:
    """``{column label: (Net, Predictions)}``, every checkpoint loaded before any is run."""
    from jax_iris.cli.evaluate import column_labels
    from jax_iris.io import checkpoint
    from jax_iris.predict import as_net, predict

    nets = []
    for path in paths:
        try:
            nets.append(as_net(checkpoint.load(path)))
        except checkpoint.CheckpointError as err:
            raise UsageError(str(err)) from None
    results = {}
    for label, path, net in zip(column_labels(paths, [n.arch for n in nets]), paths, nets):
        try:
            results[label] = (net, predict(net, table))
        except FloatingPointError as err:
            raise UsageError(f"{clean_path(path)}: {err}; retrain it") from None
    return results


def _number(value: float) -> str:
    return f"{value:g}"


def format_table(table: Any, results: dict[str, tuple[Any, Any]]) -> str:
    """A line per row: its values, then per net the species and P(setosa, versicolor, virginica)."""
    short = [name.removesuffix(" (cm)") for name in FEATURES]
    widths = [max(len(s), 6) for s in short]
    cell = 10 + 3 * 11
    head = f"{'row':>5}  " + "  ".join(f"{s:>{w}}" for s, w in zip(short, widths))
    sub = "  ".join(f"{'species':<10}" + "".join(f"{s:>11}" for s in SPECIES) for _ in results)
    labels = "  ".join(f"{label:<{cell}}" for label in results)
    lines = [f"{'':{len(head)}}    {labels}".rstrip(), f"{head}    {sub}"]
    lines.append("-" * len(lines[-1]))
    for i, values in enumerate(table):
        features = "  ".join(f"{_number(v):>{w}}" for v, w in zip(values, widths))
        nets = "  ".join(
            f"{p.species[i]:<10}" + "".join(f"{q:>11.4f}" for q in p.probabilities[i])
            for _, p in results.values()
        )
        lines.append(f"{i + 1:>5}  {features}    {nets}")
    lines.append(TABLE_NOTE)
    return "\n".join(lines) + "\n"


def format_csv(table: Any, results: dict[str, tuple[Any, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["row", *FEATURES]
    for label in results:
        header += [f"{label} species"] + [f"{label} P({s})" for s in SPECIES]
    writer.writerow(header)
    for i, values in enumerate(table):
        line = [i + 1, *map(_number, values)]
        for _, p in results.values():
            line += [p.species[i]] + [f"{q:.9g}" for q in p.probabilities[i]]
        writer.writerow(line)
    return out.getvalue()


def format_json(table: Any, results: dict[str, tuple[Any, Any]]) -> str:
    document = {
        "species": list(SPECIES),
        "probabilities": PROBABILITIES,
        "nets": [
            {"label": label, "arch": net.arch, "head": net.head}
            for label, (net, _) in results.items()
        ],
        "rows": [
            {
                "row": i + 1,
                "features": dict(zip(FEATURES, map(float, values))),
                "predictions": {
                    label: {
                        "species": p.species[i],
                        "class": int(p.classes[i]),
                        "probabilities": [float(q) for q in p.probabilities[i]],
                    }
                    for label, (_, p) in results.items()
                },
            }
            for i, values in enumerate(table)
        ],
    }
    return json.dumps(document, indent=2) + "\n"


FORMATTERS = {"table": format_table, "csv": format_csv, "json": format_json}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
