"""JAX vs the PyTorch reference, in one run: python scripts/benchmark.py [--seeds 1000]."""

import sys

from jax_iris.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
