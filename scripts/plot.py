"""Draw accuracy and loss per epoch from checkpoints."""

from jax_iris import process_life

process_life.install_for(__name__)  # as a program: before anything heavy is imported

from jax_iris.cli.plot import main  # noqa: E402

if __name__ == "__main__":
    process_life.exit(main())
