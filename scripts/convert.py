"""PyTorch state_dict <-> jax_iris checkpoint: python scripts/convert.py IN OUT."""

import sys

from jax_iris.convert import convert_command

if __name__ == "__main__":
    sys.exit(convert_command())
