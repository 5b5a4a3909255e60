"""jax_iris: the iris "elementwise attention vs linear net" experiment in JAX and Flax."""

__version__ = "0.1.0"
