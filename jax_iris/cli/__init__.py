"""The commands, one module each, and ``jax-iris COMMAND ...`` to reach them.

Each command module has ``main(argv) -> int``; ``scripts/<command>.py`` and
``python -m jax_iris <command>`` call the same function. Command modules import
jax only once their flags are checked.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from jax_iris.cli.common import EXIT_USAGE

COMMANDS = {
    "train": "train the blog's nets and print its evaluation table",
    "evaluate": "reload checkpoints and print the evaluation table",
    "predict": "classify flowers (rows of 4 measurements) with trained checkpoints",
    "sweep": "train many seeds (and learning rates, weight decays) with statistics",
    "convert": "convert between a PyTorch .pth state_dict and a jax_iris .pkl",
    "plot": "draw accuracy and loss per epoch from checkpoints",
    "benchmark": "time JAX against the PyTorch reference",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: jax-iris COMMAND [options]   (jax-iris COMMAND --help for its options)", ""]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"jax-iris: error: unknown command {name[:40]!r}; choose one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    command = importlib.import_module(f"jax_iris.cli.{name}")
    try:
        return command.main(rest)
    except SystemExit as exit_:  # argparse's --help and flag errors
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
