"""Draw accuracy and loss per epoch from checkpoints."""

import sys

from jax_iris.cli.plot import main

if __name__ == "__main__":
    sys.exit(main())
