"""Time JAX against the PyTorch reference on this machine."""

import sys

from jax_iris.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
