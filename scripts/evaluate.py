"""Reload checkpoints and print the evaluation table: python scripts/evaluate.py FILE..."""

import sys

from jax_iris.commands import evaluate_command

if __name__ == "__main__":
    sys.exit(evaluate_command())
