"""Classify iris flowers with trained checkpoints: scripts/predict.py CKPT --row 5.1,3.5,1.4,0.2"""

import sys

from jax_iris.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
