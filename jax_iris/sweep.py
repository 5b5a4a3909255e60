"""Many nets in one compiled program: ``jax.vmap`` of the one training core.

A grid trains every (learning rate, weight decay, seed) cell as one net; a seed
sweep is the 1 x 1 grid. Net ``(j, k, i)`` equals ``fit`` with ``lr = lr[j]``,
``weight_decay = weight_decay[k]``, ``seed = seeds[i]`` (and, optionally, its own
data split ``split_seeds[i]``). The hyperparameters are traced data, so a grid
compiles once per (arch, head, epochs) whatever its values. The net axis is sharded
across every available device, and grids larger than ``chunk_size`` run chunk by
chunk (the last chunk padded) so memory stays flat. Every chunk of a grid has the
same shape (``chunk_nets``), so a grid compiles once whatever its size; sizes are
rounded up to one of eight per octave, so grids of nearby sizes share that program.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_iris.config import MAX_SEED, TrainConfig
from jax_iris.data import load_split
from jax_iris.distributed import gather, local_rows, place
from jax_iris.models import Params
from jax_iris.train import Hparams, Metrics, SplitBatches, SplitMetrics, make_train, split_batches

DEFAULT_CHUNK_SIZE = 1000
DEFAULT_GROUP_SIZE = 8  # nets per vmapped step on a device; measured best of 4, 8, 16, 32


class GridResult(NamedTuple):
    """One (arch, head) grid; every array has one entry per net, in cell order."""

    config: TrainConfig  # arch, head and epochs of every net
    seeds: np.ndarray  # int64 [n]
    split_seeds: np.ndarray  # int64 [n]
    lr: np.ndarray  # float64 [n]
    weight_decay: np.ndarray  # float64 [n]
    vary_split: bool  # each net had its own split (else all used config.split_seed)
    final: SplitMetrics  # float32 [n] each, after training
    history: Metrics | None  # float32 [n, epochs] each, when asked for
    params: Params | None  # leaves [n, ...], when asked for


SweepResult = GridResult  # a seed sweep is the 1 x 1 grid

ProgressFn = Callable[[int, int], None]  # (nets done, nets in all)


def grid_cells(
    seeds: np.ndarray, lr: np.ndarray, weight_decay: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-net (seed, lr, weight decay), learning rate slowest, seed fastest."""
    lr_n, wd_n, seed_n = np.meshgrid(lr, weight_decay, seeds, indexing="ij")
    return seed_n.ravel(), lr_n.ravel(), wd_n.ravel()


def program_config(config: TrainConfig) -> TrainConfig:
    """The fields that shape the compiled program (arch, head, epochs); the rest defaulted."""
    return TrainConfig(arch=config.arch, head=config.head, epochs=config.epochs)


def make_sweep_fn(
    config: TrainConfig,
    vary_split: bool,
    keep_history: bool,
    keep_params: bool,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> Callable[[jax.Array, SplitBatches, Hparams], tuple]:
    """``(keys [n], batches, hparams [n]) -> (final, history, params)`` for n nets, unjitted.

    The nets run ``group_size`` at a time (``lax.map`` over groups, each group's whole
    epoch scan vmapped over its nets): a group's activations stay in the cache,
    where one vmap over all n nets spills them.
    """
    train = make_train(config)

    def one(key: jax.Array, batches: SplitBatches, hparams: Hparams) -> tuple:
        out = train(key, batches, hparams)
        return (
            out.final,
            out.history if keep_history else None,
            out.params if keep_params else None,
        )

    def many(keys: jax.Array, batches: SplitBatches, hparams: Hparams) -> tuple:
        if vary_split:
            return jax.lax.map(
                lambda net: one(*net), (keys, batches, hparams), batch_size=group_size
            )
        return jax.lax.map(
            lambda net: one(net[0], batches, net[1]), (keys, hparams), batch_size=group_size
        )

    return many


@functools.cache
def compile_sweep(
    config: TrainConfig,
    vary_split: bool,
    keep_history: bool,
    keep_params: bool,
    devices: int,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> Callable:
    """``make_sweep_fn`` under ``jax.jit``, its net axis split over ``devices`` devices.

    Each device runs its share of the nets as its own program (``shard_map``), so
    the groups of one device never wait for another's. Cached on
    ``program_config(config)``, so chunks of one grid, and grids of other values,
    reuse one compiled program.
    """
    fn = make_sweep_fn(program_config(config), vary_split, keep_history, keep_params, group_size)
    if devices == 1:
        return jax.jit(fn)
    along, replicated = net_shardings(devices)
    nets, shared = along.spec, replicated.spec
    fn = jax.shard_map(
        fn,
        mesh=along.mesh,
        in_specs=(nets, nets if vary_split else shared, nets),
        out_specs=nets,
    )
    return jax.jit(
        fn,
        in_shardings=(along, along if vary_split else replicated, along),
        out_shardings=along,
    )


def net_shardings(devices: int) -> tuple[NamedSharding, NamedSharding]:
    """(split along the net axis, replicated) over the first ``devices`` of ``jax.devices()``.

    In a run across processes (``jax_iris.distributed``) these are every process's
    devices, so the net axis spans them all: one global mesh.
    """
    mesh = Mesh(np.array(jax.devices()[:devices]), ("nets",))
    return NamedSharding(mesh, PartitionSpec("nets")), NamedSharding(mesh, PartitionSpec())


def _stack(batches: Sequence[SplitBatches]) -> SplitBatches:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *batches)


def _as_seeds(name: str, values: Sequence[int] | np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be a non-empty list of integers")
    if np.any(values < 0) or np.any(values > MAX_SEED):
        raise ValueError(f"{name} must be integers from 0 to {MAX_SEED}")
    return values.astype(np.int64)


def _as_rates(name: str, values: Sequence[float] | None, default: float) -> np.ndarray:
    values = np.asarray([default] if values is None else values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be a non-empty list of finite numbers")
    return values


def chunk_nets(n: int, chunk_size: int, devices: int) -> int:
    """Nets per compiled call for a grid of ``n`` nets: the one shape its program sees.

    The grid runs in ``ceil(n / chunk_size)`` chunks of equal size, rounded up to
    ``m * 2**e`` with ``8 <= m < 16`` (at most ``chunk_size``), then to a multiple of
    ``devices`` so the net axis shards evenly. Equal chunks pad less than 1/8 of
    the grid (a remainder chunk padded to ``chunk_size`` could waste nearly a whole
    chunk: 600 of 3000 nets for 2400 in chunks of 1000), and the rounding leaves
    eight shapes an octave, so grids of nearby sizes reuse one compiled program.
    """
    chunks = -(-n // chunk_size)
    even = -(-n // chunks)
    step = 1 << max(even.bit_length() - 4, 0)
    chunk = min(chunk_size, -(-even // step) * step)
    return -(-chunk // devices) * devices


def train_grid(
    config: TrainConfig,
    seeds: Sequence[int] | np.ndarray,
    lr: Sequence[float] | None = None,
    weight_decay: Sequence[float] | None = None,
    split_seeds: Sequence[int] | np.ndarray | None = None,
    *,
    history: bool = False,
    params: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    group_size: int = DEFAULT_GROUP_SIZE,
    progress: ProgressFn | None = None,
) -> GridResult:
    """Train ``len(lr) * len(weight_decay) * len(seeds)`` nets of ``config.arch``/``config.head``.

    ``lr`` and ``weight_decay`` default to the config's single values. Net
    ``(j, k, i)`` starts from ``jax.random.key(seeds[i])``; ``split_seeds[i]``, when
    given, cuts its own train/val/test split (as ``load_split``), otherwise every net
    uses ``config.split_seed``.
    """
    seeds = _as_seeds("seeds", seeds)
    lrs = _as_rates("lr", lr, config.lr)
    wds = _as_rates("weight_decay", weight_decay, config.weight_decay)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if group_size < 1:
        raise ValueError(f"group_size must be positive, got {group_size}")
    vary_split = split_seeds is not None
    if vary_split:
        split_seeds = _as_seeds("split_seeds", split_seeds)
        if split_seeds.shape != seeds.shape:
            raise ValueError("split_seeds must have one entry per seed")
    else:
        split_seeds = np.full_like(seeds, config.split_seed)
    net_seeds, net_lr, net_wd = grid_cells(seeds, lrs, wds)
    net_splits = np.tile(split_seeds, len(lrs) * len(wds))
    n = len(net_seeds)

    devices = jax.device_count()
    chunk = chunk_nets(n, chunk_size, devices)
    run = compile_sweep(program_config(config), vary_split, history, params, devices, group_size)
    # Each process builds only the nets on its own devices (all of them in one process)
    # and the results come back whole to every process: see jax_iris.distributed.
    along, replicated = net_shardings(devices)
    mine = local_rows(along, chunk)  # positions in a chunk that this process's devices hold
    make_keys = jax.jit(jax.vmap(jax.random.key), out_shardings=along)
    if not vary_split:
        shared = place(split_batches(load_split(config.split_seed)), replicated)

    outputs = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        idx = (start + mine) % n  # pad the last chunk with repeats
        keys = make_keys(place(net_seeds[idx].astype(np.uint32), along, chunk))
        hparams = place(
            Hparams(net_lr[idx].astype(np.float32), net_wd[idx].astype(np.float32)), along, chunk
        )
        if vary_split:
            batches = _stack([split_batches(load_split(int(s))) for s in net_splits[idx]])
            batches = place(batches, along, chunk)
        else:
            batches = shared
        out = gather(run(keys, batches, hparams))
        outputs.append(jax.tree_util.tree_map(lambda a, k=stop - start: a[:k], out))
        if progress is not None:
            progress(stop, n)

    final, hist, trained = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *outputs)
    return GridResult(
        config=dataclasses.replace(config, seed=0),
        seeds=net_seeds,
        split_seeds=net_splits,
        lr=net_lr,
        weight_decay=net_wd,
        vary_split=vary_split,
        final=final,
        history=hist,
        params=trained,
    )


def train_seeds(
    config: TrainConfig,
    seeds: Sequence[int] | np.ndarray,
    split_seeds: Sequence[int] | np.ndarray | None = None,
    **options,
) -> GridResult:
    """A seed sweep: the 1 x 1 grid at ``config.lr`` and ``config.weight_decay``."""
    return train_grid(config, seeds, None, None, split_seeds, **options)
