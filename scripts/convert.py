"""Convert a PyTorch .pth state_dict to a jax_iris .pkl checkpoint, or back."""

import sys

from jax_iris.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
