"""The commands, one module each, and ``jax-iris COMMAND ...`` to reach them.

Each command module has ``main(argv) -> int``; ``scripts/<command>.py`` and
``python -m jax_iris <command>`` call the same function. Command modules import
jax only once their flags are checked.
"""

from __future__ import annotations

import sys

from jax_iris import process_life

if sys.argv and sys.argv[0].rpartition("/")[2] == "jax-iris":  # the console script
    process_life.install()  # before anything heavy is imported

import importlib  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from jax_iris.cli.common import EXIT_USAGE, invoked_as  # noqa: E402

COMMANDS = {
    "train": "train the blog's nets and print its evaluation table",
    "evaluate": "reload checkpoints and print the evaluation table",
    "predict": "classify flowers (rows of 4 measurements) with trained checkpoints",
    "sweep": "train many seeds (and learning rates, weight decays) with statistics",
    "convert": "convert between a PyTorch .pth state_dict and a jax_iris .pkl",
    "plot": "draw accuracy and loss per epoch from checkpoints",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: jax-iris COMMAND [options]   (jax-iris COMMAND --help for its options)", ""]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    code = _dispatch(list(sys.argv[1:] if argv is None else argv))
    if process_life.installed():  # the program itself: flush and end here
        process_life.exit(code)
    return code


def _dispatch(argv: list[str]) -> int:
    if not argv:
        print(usage(), file=sys.stderr)
        return EXIT_USAGE
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"jax-iris: error: unknown command {name[:40]!r}; choose one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    with invoked_as(f"jax-iris {name}"):
        command = importlib.import_module(f"jax_iris.cli.{name}")  # a stop waits for run_main
        try:
            return command.main(rest)
        except SystemExit as exit_:  # argparse's --help and flag errors
            return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
