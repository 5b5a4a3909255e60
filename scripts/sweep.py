"""Seed sweeps: python scripts/sweep.py --arch atten linear --seeds 1000 [--vary-split]."""

import sys

from jax_iris.sweep_command import sweep_command

if __name__ == "__main__":
    sys.exit(sweep_command())
