"""Full-batch training as the blog does it, compiled by XLA.

The maths being matched (torch, per epoch, on all 120 training rows)::

    p = sigmoid(net(x))                      # the blog's outputs
    loss = CrossEntropyLoss(p, y)            # softmax-CE of values in (0, 1)
    Adam(lr, weight_decay).step()            # coupled L2: g + wd * w, then Adam

Loss and accuracy of an epoch are measured on the parameters *before* that
epoch's update, as the blog logs them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_iris.data import Dataset, Split, load_split
from jax_iris.models import ARCHS, HEADS, Params, get_model, init_params

_MAX_SEED = 2**32 - 1  # numpy's legacy RandomState accepts seeds below 2**32


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Command-line flags are derived from it."""

    arch: str = field(default="atten", metadata={"help": "network: " + " or ".join(ARCHS)})
    epochs: int = field(default=1000, metadata={"help": "full-batch epochs"})
    lr: float = field(default=0.005, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(
        default=1e-3, metadata={"help": "L2 added to the gradient (torch Adam weight_decay)"}
    )
    seed: int = field(default=0, metadata={"help": "initial-weight seed: jax.random.key(seed)"})
    split_seed: int = field(default=666, metadata={"help": "numpy seed of the data split"})
    log_every: int = field(default=100, metadata={"help": "epochs between progress lines"})
    head: str = field(
        default="sigmoid",
        metadata={"help": "output head: sigmoid (the blog) or logits (no squashing)"},
    )

    def __post_init__(self) -> None:
        _require(self.arch in ARCHS, f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        _require(self.head in HEADS, f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        for name in ("epochs", "log_every"):
            value = getattr(self, name)
            _require(
                _is_int(value) and value > 0, f"{name} must be a positive integer, got {value!r}"
            )
        for name in ("seed", "split_seed"):
            value = getattr(self, name)
            _require(
                _is_int(value) and 0 <= value <= _MAX_SEED,
                f"{name} must be an integer from 0 to {_MAX_SEED}, got {value!r}",
            )
        _require(
            _is_real(self.lr) and math.isfinite(self.lr) and self.lr > 0,
            f"lr must be a finite number > 0, got {self.lr!r}",
        )
        _require(
            _is_real(self.weight_decay)
            and math.isfinite(self.weight_decay)
            and self.weight_decay >= 0,
            f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from ``to_dict``; unknown keys raise ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        _require(not unknown, f"unknown config fields: {', '.join(map(str, unknown))}")
        return cls(**values)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class Batch(NamedTuple):
    x: jax.Array  # float [n, 4]
    y: jax.Array  # int32 [n]


class TrainState(NamedTuple):
    params: Params
    opt_state: optax.OptState


class EpochMetrics(NamedTuple):
    loss: jax.Array  # [] per epoch; [epochs] once stacked by the scan
    accuracy: jax.Array  # [] per epoch; [epochs] once stacked by the scan


class TrainResult(NamedTuple):
    params: Params  # final parameters, {"params": {...}}
    history: EpochMetrics  # numpy [epochs] each, in the params' dtype
    compile_seconds: float
    train_seconds: float


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or parameter."""


def make_optimizer(lr: float, weight_decay: float) -> optax.GradientTransformation:
    """torch ``Adam(lr, weight_decay=wd)``: L2 *coupled* to the gradient.

    torch adds ``wd * w`` to the gradient before the moments, which is
    ``add_decayed_weights`` ahead of ``adam``. ``optax.adamw`` decays the weights
    after the moments (decoupled) and would not match.
    """
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))


def loss_and_accuracy(outputs: jax.Array, labels: jax.Array) -> EpochMetrics:
    """torch ``CrossEntropyLoss`` (softmax-CE, mean over rows) and argmax accuracy.

    With the blog's sigmoid head ``outputs`` lie in (0, 1), so the loss cannot go
    below -log(e / (e + 2)) ~= 0.5514 for three classes.
    """
    loss = optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()
    # A float32 fraction of the rows: 78/120 comes out 0.65000004 here, 0.64999998 in torch
    # (one ulp apart; XLA:CPU's division is not correctly rounded). Tests compare counts.
    accuracy = (jnp.argmax(outputs, axis=-1) == labels).mean(dtype=outputs.dtype)
    return EpochMetrics(loss, accuracy)


def train_step(
    state: TrainState,
    batch: Batch,
    model: Any,
    optimizer: optax.GradientTransformation,
) -> tuple[TrainState, EpochMetrics]:
    """One full-batch epoch: metrics of the current params, then one Adam update."""

    def loss_fn(params: Params) -> tuple[jax.Array, EpochMetrics]:
        metrics = loss_and_accuracy(model.apply(params, batch.x), batch.y)
        return metrics.loss, metrics

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state), metrics


def run_epochs(
    state: TrainState,
    batch: Batch,
    num_epochs: int,
    model: Any,
    optimizer: optax.GradientTransformation,
) -> tuple[TrainState, EpochMetrics]:
    """``num_epochs`` train steps fused into one ``lax.scan``; metrics stacked [num_epochs]."""

    def body(carry: TrainState, _: None) -> tuple[TrainState, EpochMetrics]:
        return train_step(carry, batch, model, optimizer)

    return jax.lax.scan(body, state, None, length=num_epochs)


def as_key(seed: int | jax.Array) -> jax.Array:
    """An integer seed becomes ``jax.random.key(seed)``; a key passes through."""
    return jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed


def make_train(config: TrainConfig) -> Callable[[jax.Array, Batch], tuple[Params, EpochMetrics]]:
    """A pure ``train(key, batch) -> (params, history)`` for the whole run.

    It is what the seed sweep vmaps: ``jax.jit(jax.vmap(train))(keys, batches)``.
    """
    model = get_model(config.arch, config.head)
    optimizer = make_optimizer(config.lr, config.weight_decay)

    def train(key: jax.Array, batch: Batch) -> tuple[Params, EpochMetrics]:
        params = init_params(config.arch, key)
        state = TrainState(params, optimizer.init(params))
        state, history = run_epochs(state, batch, config.epochs, model, optimizer)
        return state.params, history

    return train


def as_batch(data: Dataset, dtype: Any = jnp.float32) -> Batch:
    return Batch(jnp.asarray(data.x, dtype), jnp.asarray(data.y, jnp.int32))


def _chunk_lengths(epochs: int, log_every: int) -> list[int]:
    full, rest = divmod(epochs, log_every)
    return [log_every] * full + ([rest] if rest else [])


def _run_chunk(
    state: TrainState,
    batch: Batch,
    num_epochs: int,
    model: Any,
    optimizer: optax.GradientTransformation,
) -> tuple[TrainState, EpochMetrics, jax.Array]:
    """``run_epochs`` plus one flag: are all parameters still finite? (checked on device)."""
    state, metrics = run_epochs(state, batch, num_epochs, model, optimizer)
    leaves = jax.tree_util.tree_leaves(state.params)
    finite = jnp.stack([jnp.isfinite(leaf).all() for leaf in leaves]).all()
    return state, metrics, finite


def _check_finite(metrics: EpochMetrics, params_finite: bool, epoch_offset: int) -> None:
    losses = np.asarray(metrics.loss)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        epoch = epoch_offset + int(bad[0]) + 1
        raise DivergenceError(
            f"training diverged: the loss became {losses[bad[0]]} at epoch {epoch}"
        )
    if not params_finite:
        epoch = epoch_offset + losses.size
        raise DivergenceError(f"training diverged: a parameter became non-finite by epoch {epoch}")


ProgressFn = Callable[[int, float, float], None]


def fit(
    config: TrainConfig,
    init_params: Params | None = None,
    split: Split | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train one net as the blog does.

    Epochs run in compiled ``lax.scan`` chunks of ``config.log_every`` so that
    ``progress(epoch, loss, accuracy)`` can be called between chunks without a
    host round trip every epoch. ``init_params`` starts from given weights (for
    example converted from PyTorch) instead of ``jax.random.key(config.seed)``.

    Raises:
        DivergenceError: the loss or a parameter became NaN or infinite.
    """
    split = split if split is not None else load_split(config.split_seed)
    model = get_model(config.arch, config.head)
    optimizer = make_optimizer(config.lr, config.weight_decay)
    if init_params is None:
        params = _init_jit(config.arch, as_key(config.seed))
    else:
        params = jax.tree_util.tree_map(jnp.asarray, init_params)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    batch = as_batch(split.train, dtype)
    state = TrainState(params, jax.jit(optimizer.init)(params))

    start = time.perf_counter()
    lengths = _chunk_lengths(config.epochs, config.log_every)
    compiled = {
        n: jax.jit(functools.partial(_run_chunk, num_epochs=n, model=model, optimizer=optimizer))
        .lower(state, batch)
        .compile()
        for n in sorted(set(lengths))
    }
    compile_seconds = time.perf_counter() - start

    start = time.perf_counter()
    chunks, done = [], 0
    for n in lengths:
        state, metrics, params_finite = compiled[n](state, batch)
        _check_finite(metrics, bool(params_finite), done)
        chunks.append(metrics)
        done += n
        if progress is not None:
            progress(done, float(metrics.loss[-1]), float(metrics.accuracy[-1]))
    jax.block_until_ready(state)
    train_seconds = time.perf_counter() - start

    history = EpochMetrics(
        *(np.concatenate([np.asarray(getattr(c, f)) for c in chunks]) for f in EpochMetrics._fields)
    )
    return TrainResult(state.params, history, compile_seconds, train_seconds)


_init_jit = jax.jit(init_params, static_argnums=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _metrics(arch: str, head: str, params: Params, batch: Batch) -> EpochMetrics:
    return loss_and_accuracy(get_model(arch, head).apply(params, batch.x), batch.y)


def evaluate(
    arch: str, params: Params, split: Split, head: str = "sigmoid"
) -> dict[str, dict[str, float]]:
    """Loss and accuracy on each split, as the blog's final table reports them."""
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    table = {}
    for name, data in zip(Split._fields, split):
        metrics = _metrics(arch, head, params, as_batch(data, dtype))
        table[name] = {"loss": float(metrics.loss), "accuracy": float(metrics.accuracy)}
    return table
