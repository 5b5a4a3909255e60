"""``python -m jax_iris COMMAND ...``: the same as the ``jax-iris`` command."""

import sys

from jax_iris.cli import main

sys.exit(main())
