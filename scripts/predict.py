"""Classify iris flowers with trained checkpoints: scripts/predict.py CKPT --row 5.1,3.5,1.4,0.2"""

from jax_iris import process_life

process_life.install_for(__name__)  # as a program: before anything heavy is imported

from jax_iris.cli.predict import main  # noqa: E402

if __name__ == "__main__":
    process_life.exit(main())
