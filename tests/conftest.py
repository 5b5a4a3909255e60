"""Strict JAX for every test, one compilation cache for the whole run, no leaked state.

- Rank promotion raises: an implicit broadcast (a bias of shape [out] added to a batch
  [rows, out]) is a bug in this code base, not a convenience.
- Dtype promotion stays "standard": optax's Adam raises a Python float to an int32 step
  count (its bias correction), which "strict" refuses; nothing of ours needs it off.
- Compiled programs go to JAX's persistent cache, kept in pytest's cache folder
  (``.pytest_cache``; ``pytest --cache-clear`` empties it, ``-p no:cacheprovider`` uses a
  temporary folder instead). Tests that train the same (arch, head, epochs) program, in
  this process or in the scripts they start, compile it once; a later run reuses it.
  The key is the program itself, so a changed library never meets a stale entry. No size
  cap: JAX's eviction is not safe while other sessions use the same folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import jax
import pytest

# Before any test starts a backend: the XLA flags every command trains under
# (jax_iris.platform.use_default_xla_flags), so numbers in here and in the scripts the
# tests start come from the same programs.
import jax_iris.models  # noqa: F401

jax.config.update("jax_numpy_rank_promotion", "raise")

_temporary_cache: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _temporary_cache
    cache = getattr(config, "cache", None)
    if cache is not None:
        folder = str(cache.mkdir("jax_iris_xla"))
    else:
        folder = _temporary_cache = tempfile.mkdtemp(prefix="jax_iris_tests_xla_")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    # The commands turn the same cache on (``enable_compilation_cache``), here and in the
    # scripts the tests start, instead of filling ~/.cache.
    os.environ["JAX_IRIS_CACHE_DIR"] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    if _temporary_cache is not None:
        shutil.rmtree(_temporary_cache, ignore_errors=True)


@pytest.fixture(autouse=True)
def _restore_xla_flags():
    """The sweep command sets ``XLA_FLAGS`` (host devices) for its own process; undo it."""
    before = os.environ.get("XLA_FLAGS")
    yield
    if before is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = before


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: torch's threads only contend on a 2-core machine (5-30x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
