"""Many seeds in one compiled program: ``jax.vmap`` of the single-run ``train``.

Net ``i`` of a sweep is ``fit`` with ``seed = seeds[i]`` (and, optionally, its own
data split ``split_seeds[i]``). The seed axis is sharded across every available
device, and sweeps larger than ``chunk_size`` run chunk by chunk so memory stays flat.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_iris.data import Split, load_split
from jax_iris.models import Params, get_model
from jax_iris.train import (
    Batch,
    EpochMetrics,
    TrainConfig,
    as_batch,
    loss_and_accuracy,
    make_train,
)

DEFAULT_CHUNK_SIZE = 1000
SPLITS = Split._fields  # ("train", "val", "test")
METRICS = EpochMetrics._fields  # ("loss", "accuracy")


class SplitBatches(NamedTuple):
    train: Batch  # x [120, 4], y [120]; with a leading [n] axis when splits vary
    val: Batch
    test: Batch


class SweepResult(NamedTuple):
    seeds: np.ndarray  # int64 [n]
    split_seeds: np.ndarray  # int64 [n]
    vary_split: bool  # each net had its own split (else all used config.split_seed)
    final: dict[str, dict[str, np.ndarray]]  # split -> metric -> float32 [n], after training
    history: EpochMetrics | None  # float32 [n, epochs] each, when asked for
    params: Params | None  # leaves [n, ...], when asked for


ProgressFn = Callable[[int, int], None]  # (nets done, nets in all)


def split_batches(split: Split) -> SplitBatches:
    """The three parts of a split as device batches."""
    return SplitBatches(*(as_batch(part) for part in split))


def _stack(batches: Sequence[SplitBatches]) -> SplitBatches:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *batches)


def make_sweep_fn(
    config: TrainConfig, vary_split: bool, keep_history: bool, keep_params: bool
) -> Callable[[jax.Array, SplitBatches], tuple]:
    """``(keys [n], batches) -> (final, history, params)`` for n nets at once, unjitted."""
    train = make_train(config)
    model = get_model(config.arch, config.head)

    def one(key: jax.Array, batches: SplitBatches) -> tuple:
        params, history = train(key, batches.train)
        final = {
            name: loss_and_accuracy(model.apply(params, b.x), b.y)._asdict()
            for name, b in zip(SPLITS, batches)
        }
        return final, history if keep_history else None, params if keep_params else None

    return jax.vmap(one, in_axes=(0, 0 if vary_split else None))


@functools.cache
def compile_sweep(
    config: TrainConfig, vary_split: bool, keep_history: bool, keep_params: bool, devices: int
) -> Callable:
    """``make_sweep_fn`` under ``jax.jit``, its seed axis sharded over ``devices`` devices.

    Cached, so chunks of one sweep (and repeated sweeps) reuse one compiled program.
    """
    fn = make_sweep_fn(config, vary_split, keep_history, keep_params)
    if devices == 1:
        return jax.jit(fn)
    mesh = Mesh(np.array(jax.devices()[:devices]), ("seeds",))
    along = NamedSharding(mesh, PartitionSpec("seeds"))
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        fn,
        in_shardings=(along, along if vary_split else replicated),
        out_shardings=along,
    )


def train_seeds(
    config: TrainConfig,
    seeds: Sequence[int] | np.ndarray,
    split_seeds: Sequence[int] | np.ndarray | None = None,
    *,
    history: bool = False,
    params: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: ProgressFn | None = None,
) -> SweepResult:
    """Train ``len(seeds)`` nets of ``config.arch``; net i starts from ``jax.random.key(seeds[i])``.

    ``split_seeds[i]``, when given, cuts net i's own train/val/test split with the
    same legacy numpy procedure as ``load_split``; otherwise every net uses
    ``config.split_seed``. The seed axis is sharded over ``jax.devices()``.
    """
    seeds = np.asarray(seeds, dtype=np.int64)
    if seeds.ndim != 1 or seeds.size == 0:
        raise ValueError("seeds must be a non-empty list of integers")
    if np.any(seeds < 0) or np.any(seeds > 2**32 - 1):
        raise ValueError("seeds must be integers from 0 to 2**32 - 1")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    vary_split = split_seeds is not None
    if vary_split:
        split_seeds = np.asarray(split_seeds, dtype=np.int64)
        if split_seeds.shape != seeds.shape:
            raise ValueError("split_seeds must have one entry per seed")
    else:
        split_seeds = np.full_like(seeds, config.split_seed)

    devices = jax.device_count()
    chunk = min(chunk_size, len(seeds))
    chunk = -(-chunk // devices) * devices  # a multiple of the device count
    run = compile_sweep(config, vary_split, history, params, devices)
    shared = None if vary_split else split_batches(load_split(config.split_seed))

    outputs = []
    for start in range(0, len(seeds), chunk):
        stop = min(start + chunk, len(seeds))
        idx = np.arange(start, start + chunk) % len(seeds)  # pad the last chunk with repeats
        keys = jax.vmap(jax.random.key)(jnp.asarray(seeds[idx], dtype=jnp.uint32))
        if vary_split:
            batches = _stack([split_batches(load_split(int(s))) for s in split_seeds[idx]])
        else:
            batches = shared
        out = jax.device_get(run(keys, batches))
        outputs.append(jax.tree_util.tree_map(lambda a, n=stop - start: a[:n], out))
        if progress is not None:
            progress(stop, len(seeds))

    final, hist, trained = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *outputs)
    return SweepResult(
        seeds=seeds,
        split_seeds=split_seeds,
        vary_split=vary_split,
        final=final,
        history=hist,
        params=trained,
    )


def progress_bar(done: int, total: int, width: int = 30) -> None:
    """A one-line text progress bar on stdout (stderr is kept for errors)."""
    filled = width * done // total
    end = "\n" if done == total else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} nets", end=end, flush=True)
