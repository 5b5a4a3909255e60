"""Train many seeds (x learning rates x weight decays) and compare the nets."""

import sys

from jax_iris.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
