"""``python -m jax_iris COMMAND ...``: the same as the ``jax-iris`` command."""

from jax_iris import process_life

process_life.install()  # before anything heavy is imported

from jax_iris.cli import main  # noqa: E402

process_life.exit(main())
