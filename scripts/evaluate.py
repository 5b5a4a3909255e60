"""Print the blog's evaluation table for saved checkpoints."""

import sys

from jax_iris.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
