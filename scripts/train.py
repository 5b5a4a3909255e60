"""Train the blog's iris nets: python scripts/train.py --arch atten."""

from jax_iris import process_life

process_life.install_for(__name__)  # as a program: before anything heavy is imported

from jax_iris.cli.train import main  # noqa: E402

if __name__ == "__main__":
    process_life.exit(main())
