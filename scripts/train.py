"""Train the blog's iris nets: python scripts/train.py --arch atten."""

import sys

from jax_iris.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
