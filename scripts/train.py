"""Train the blog's iris nets: python scripts/train.py --arch atten|linear|both."""

import sys

from jax_iris.commands import train_command

if __name__ == "__main__":
    sys.exit(train_command())
