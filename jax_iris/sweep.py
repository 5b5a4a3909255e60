"""Many nets, one number each: the group program of ``jax_iris.train`` over a grid.

A grid trains every (learning rate, weight decay, seed) cell as one net; a seed
sweep is the 1 x 1 grid. Nets are laid out learning rate slowest, seed fastest,
and cut into chunks of ``chunk_size`` nets (the unit a results store keeps, see
``jax_iris.io.store``). A chunk's nets are shared out over every device (every
process's, under ``jax.distributed``), each device's share padded to whole groups
and run as separate calls of the same compiled group programs ``fit`` uses.

So net ``(j, k, i)`` is bit for bit ``fit`` with ``lr = lr[j]``,
``weight_decay = weight_decay[k]``, ``seed = seeds[i]`` (and ``split_seed =
split_seeds[i]`` when given), whatever the grid's size, the chunk size, the
number of devices or processes, and wherever it sits in its group: the compiled
per-net shape never changes. Only the group size (fixed per platform, see
``default_group_size``), the platform and the library versions change it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from jax_iris import registry
from jax_iris.config import MAX_SEED, TrainConfig
from jax_iris.data import load_split
from jax_iris.models import Params
from jax_iris.train import (
    Hparams,
    Metrics,
    SplitBatches,
    SplitMetrics,
    default_group_size,
    epoch_blocks,
    host_array,
    padded_size,
    programs,
    split_batches,
)

DEFAULT_CHUNK_SIZE = 1000
EPOCH_BLOCK = 10_000  # epochs per call: bounds a call's history, not its results


class GridResult(NamedTuple):
    """One (arch, head) grid; every array has one entry per net, in cell order."""

    config: TrainConfig  # arch, head and epochs of every net
    seeds: np.ndarray  # int64 [n]
    split_seeds: np.ndarray  # int64 [n]
    lr: np.ndarray  # float64 [n], each exactly the float32 value trained with
    weight_decay: np.ndarray  # float64 [n], likewise
    vary_split: bool  # each net had its own split (else all used config.split_seed)
    final: SplitMetrics  # float32 [n] each, after training
    history: Metrics | None  # float32 [n, epochs] each, when asked for
    params: Params | None  # leaves [n, ...], when asked for


SweepResult = GridResult  # a seed sweep is the 1 x 1 grid


class ChunkResult(NamedTuple):
    """The nets of one chunk, on the host: numpy arrays with one entry per net."""

    final: SplitMetrics  # float32 [c] each
    history: Metrics | None  # float32 [c, epochs] each
    params: Params | None  # leaves [c, ...]


ProgressFn = Callable[[int, int], None]  # (nets done, nets in all)


@dataclasses.dataclass(frozen=True)
class GridPlan:
    """Which net is where: the grid's nets in cell order, and its chunks."""

    config: TrainConfig  # arch, head, epochs, split_seed
    seeds: np.ndarray  # int64 [n]
    split_seeds: np.ndarray  # int64 [n]
    lr: np.ndarray  # float64 [n], float32 values
    weight_decay: np.ndarray  # float64 [n], float32 values
    vary_split: bool
    chunk_size: int
    group_size: int

    @property
    def nets(self) -> int:
        return len(self.seeds)

    @property
    def chunks(self) -> int:
        return -(-self.nets // self.chunk_size)

    def chunk_range(self, index: int) -> range:
        start = index * self.chunk_size
        return range(start, min(start + self.chunk_size, self.nets))


def as_float32(values: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    """Each value rounded to the float32 it trains with; equal ones kept once, in order."""
    return tuple(dict.fromkeys(float(np.float32(v)) for v in values))


def grid_cells(
    seeds: np.ndarray, lr: np.ndarray, weight_decay: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-net (seed, lr, weight decay), learning rate slowest, seed fastest."""
    lr_n, wd_n, seed_n = np.meshgrid(lr, weight_decay, seeds, indexing="ij")
    return seed_n.ravel(), lr_n.ravel(), wd_n.ravel()


def _as_seeds(name: str, values: Sequence[int] | np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be a non-empty list of integers")
    if np.any(values < 0) or np.any(values > MAX_SEED):
        raise ValueError(f"{name} must be integers from 0 to {MAX_SEED}")
    return values.astype(np.int64)


def _as_rates(name: str, values: Sequence[float] | np.ndarray | None, default: float) -> np.ndarray:
    rates = np.asarray([default] if values is None else values, dtype=np.float64)
    if rates.ndim != 1 or rates.size == 0 or not np.all(np.isfinite(rates)):
        raise ValueError(f"{name} must be a non-empty list of finite numbers")
    return np.asarray(as_float32(rates), dtype=np.float64)


def plan_grid(
    config: TrainConfig,
    seeds: Sequence[int] | np.ndarray,
    lr: Sequence[float] | np.ndarray | None = None,
    weight_decay: Sequence[float] | np.ndarray | None = None,
    split_seeds: Sequence[int] | np.ndarray | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    group_size: int | None = None,
) -> GridPlan:
    """The nets of a grid of ``config.arch``/``config.head`` and how they are chunked.

    ``lr`` and ``weight_decay`` default to the config's single values; values equal
    in float32 are one cell. ``group_size`` defaults to the platform's.
    """
    seeds = _as_seeds("seeds", seeds)
    lrs = _as_rates("lr", lr, config.lr)
    wds = _as_rates("weight_decay", weight_decay, config.weight_decay)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    group = default_group_size() if group_size is None else group_size
    if group < 1:
        raise ValueError(f"group_size must be positive, got {group}")
    vary_split = split_seeds is not None
    if vary_split:
        split_seeds = _as_seeds("split_seeds", split_seeds)
        if split_seeds.shape != seeds.shape:
            raise ValueError("split_seeds must have one entry per seed")
    else:
        split_seeds = np.full_like(seeds, config.split_seed)
    net_seeds, net_lr, net_wd = grid_cells(seeds, lrs, wds)
    return GridPlan(
        config=dataclasses.replace(config, seed=0),
        seeds=net_seeds,
        split_seeds=np.tile(split_seeds, len(lrs) * len(wds)),
        lr=net_lr,
        weight_decay=net_wd,
        vary_split=vary_split,
        chunk_size=chunk_size,
        group_size=group,
    )


@functools.lru_cache(maxsize=64)
def _split_batches(split_seed: int) -> SplitBatches:
    return split_batches(load_split(split_seed))


def _net_batches(split_seeds: np.ndarray) -> SplitBatches:
    """Per-net batches [n, rows, ...], one split per distinct split seed."""
    parts = [_split_batches(int(s)) for s in split_seeds]
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *parts)


def device_share(nets: int, devices: int, group: int) -> int:
    """Nets per device for a chunk of ``nets``: whole groups, their count rounded up to
    ``m * 2**e`` with ``8 <= m < 16``, so chunks of nearby sizes share one compiled
    shape (eight an octave) at under 1/8 padding. The shape changes only how many
    groups a call runs, never a net's result."""
    groups = -(-padded_size(-(-nets // devices), group) // group)
    step = 1 << max(groups.bit_length() - 4, 0)
    return -(-groups // step) * step * group


def train_chunk(
    plan: GridPlan, index: int, *, history: bool = False, params: bool = False
) -> ChunkResult:
    """Train chunk ``index`` of ``plan`` (see ``_train_chunk``) at the config's matmul
    precision."""
    with jax.default_matmul_precision(plan.config.matmul_precision):
        return _train_chunk(plan, index, history=history, params=params)


def _train_chunk(
    plan: GridPlan, index: int, *, history: bool = False, params: bool = False
) -> ChunkResult:
    """Train chunk ``index`` of ``plan`` on every device; the result on every process.

    Device ``j`` of ``jax.devices()`` takes positions ``[j * per, (j + 1) * per)`` of
    the chunk, ``per = device_share(...)`` whole groups; positions past the chunk's end
    repeat its nets (padding cannot change a net: groups are position-invariant).
    """
    nets = plan.chunk_range(index)
    count = len(nets)
    everywhere = jax.devices()
    per = device_share(count, len(everywhere), plan.group_size)
    progs = programs(registry.arch_spec(plan.config.arch), plan.config.head, plan.group_size)
    jobs = []
    for device in jax.local_devices():
        j = everywhere.index(device)
        idx = nets.start + np.arange(j * per, (j + 1) * per) % count
        hparams = Hparams(
            host_array(plan.lr[idx].astype(np.float32)),
            host_array(plan.weight_decay[idx].astype(np.float32)),
        )
        seeds, hparams, batches = jax.device_put(
            (plan.seeds[idx].astype(np.uint32), hparams, _net_batches(plan.split_seeds[idx])),
            device,
        )
        jobs.append([j, progs.init(seeds, hparams), batches, hparams, []])
    for block in epoch_blocks(plan.config.epochs, EPOCH_BLOCK):
        for job in jobs:  # dispatched without waiting: the devices run side by side
            _, state, batches, hparams, curves = job
            job[1], metrics = progs.run(state, batches.train, hparams, block)
            if history:
                curves.append(metrics)
    local = []
    for j, state, batches, _, curves in jobs:
        table = progs.table(state.params, batches)
        curve = None
        if history:
            curve = Metrics(
                *(np.concatenate([np.asarray(c[i]) for c in curves], 1) for i in (0, 1))
            )
        local.append((j, jax.device_get((table, curve, state.params if params else None))))
    local.sort(key=lambda item: item[0])
    whole = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *(part for _, part in local))
    if jax.process_count() > 1:  # every device's part, in jax.devices() order, everywhere
        from jax_iris.distributed import allgather

        whole = allgather(whole, tiled=True)
    return ChunkResult(*jax.tree_util.tree_map(lambda a: a[:count], whole))


def result_of(plan: GridPlan, chunks: Sequence[ChunkResult]) -> GridResult:
    """The grid's result from its chunks, in order."""
    final, hist, trained = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *chunks)
    return GridResult(
        config=plan.config,
        seeds=plan.seeds,
        split_seeds=plan.split_seeds,
        lr=plan.lr,
        weight_decay=plan.weight_decay,
        vary_split=plan.vary_split,
        final=final,
        history=hist,
        params=trained,
    )


def train_grid(
    config: TrainConfig,
    seeds: Sequence[int] | np.ndarray,
    lr: Sequence[float] | np.ndarray | None = None,
    weight_decay: Sequence[float] | np.ndarray | None = None,
    split_seeds: Sequence[int] | np.ndarray | None = None,
    *,
    history: bool = False,
    params: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    group_size: int | None = None,
    progress: ProgressFn | None = None,
) -> GridResult:
    """Train ``len(lr) * len(weight_decay) * len(seeds)`` nets of ``config.arch``/``config.head``.

    ``lr`` and ``weight_decay`` default to the config's single values. Net
    ``(j, k, i)`` starts from ``jax.random.key(seeds[i])``; ``split_seeds[i]``, when
    given, cuts its own train/val/test split (as ``load_split``), otherwise every net
    uses ``config.split_seed``. Nothing is kept on disk: ``jax-iris sweep`` adds a
    resumable store.
    """
    plan = plan_grid(
        config,
        seeds,
        lr,
        weight_decay,
        split_seeds,
        chunk_size=chunk_size,
        group_size=group_size,
    )
    chunks = []
    for index in range(plan.chunks):
        chunks.append(train_chunk(plan, index, history=history, params=params))
        if progress is not None:
            progress(plan.chunk_range(index).stop, plan.nets)
    return result_of(plan, chunks)


def train_seeds(
    config: TrainConfig,
    seeds: Sequence[int] | np.ndarray,
    split_seeds: Sequence[int] | np.ndarray | None = None,
    **options,
) -> GridResult:
    """A seed sweep: the 1 x 1 grid at ``config.lr`` and ``config.weight_decay``."""
    return train_grid(config, seeds, None, None, split_seeds, **options)
