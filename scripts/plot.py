"""Draw train accuracy and loss per epoch from checkpoints: python scripts/plot.py RUN..."""

import sys

from jax_iris.plots import plot_command

if __name__ == "__main__":
    sys.exit(plot_command())
