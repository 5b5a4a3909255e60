"""``jax-iris plot`` (``scripts/plot.py``): the blog's convergence figures from checkpoints."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jax_iris.cli.common import Parser, UsageError, check_writable_dir, run_main
from jax_iris.quote import clean_path

PROG = "plot.py"


def parser() -> Parser:
    from jax_iris.report.plots import DEFAULT_OUT

    p = Parser(
        prog=PROG,
        description="Draw train accuracy and loss per epoch (the blog's Figures 3 and 4) "
        "from saved checkpoints; no retraining.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="a checkpoint .pkl written by train.py")
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help="folder for accuracy.png and loss.png (default: %(default)s)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """One line on stderr and exit 2 for any user mistake; both PNGs or neither."""
    args = parser().parse_args(argv)

    def body() -> int:
        from jax_iris.io.fileio import commit
        from jax_iris.report.plots import PlotError, load_runs, require_matplotlib, run_figures

        out_dir = check_writable_dir(args.out, "--out")
        try:
            require_matplotlib()  # before reading any file
            files = run_figures(load_runs(args.runs), out_dir)
        except PlotError as err:
            raise UsageError(str(err)) from None
        for path in files:  # a rename onto a folder would fail after the first PNG is in place
            if path.is_dir() and not path.is_symlink():
                raise UsageError(
                    f"cannot write {clean_path(path)}: it is a folder; nothing was written,"
                    " earlier files are as they were; move it or choose another --out"
                )
        try:
            written = commit(files)
        except OSError as err:
            raise UsageError(
                f"cannot write to {clean_path(out_dir)} ({err.strerror or err}); nothing was"
                " written, earlier files are as they were; choose another --out"
            ) from None
        for path in written:
            print(f"wrote {clean_path(path)}")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
