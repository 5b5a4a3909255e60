"""The one training core: full-batch training as the blog does it, compiled by XLA.

The maths being matched (torch, per epoch, on all 120 training rows)::

    p = sigmoid(net(x))                      # the blog's outputs (the "sigmoid" head)
    loss = CrossEntropyLoss(p, y)            # softmax-CE of values in (0, 1)
    Adam(lr, weight_decay).step()            # coupled L2: g + wd * w, then Adam

Loss and accuracy of an epoch are measured on the parameters *before* that
epoch's update, as the blog logs them.

``make_train(config)`` returns the pure ``train(key, batches, hparams)``; the
learning rate and weight decay are traced arrays (``Hparams``), so new values never
recompile. ``fit`` runs the same pieces chunk by chunk on the host (for progress
lines and a divergence check); a sweep is ``jax.vmap`` of ``train``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_iris import registry
from jax_iris.config import TrainConfig
from jax_iris.data import Dataset, Split, load_split
from jax_iris.models import Params, get_model, init_params


class Batch(NamedTuple):
    x: jax.Array  # float [rows, 4]
    y: jax.Array  # int32 [rows]


class SplitBatches(NamedTuple):
    train: Batch
    val: Batch
    test: Batch


class Metrics(NamedTuple):
    """Loss and accuracy: scalars once, [epochs] for a history, [nets] in sweeps."""

    loss: Any
    accuracy: Any


class SplitMetrics(NamedTuple):
    train: Metrics
    val: Metrics
    test: Metrics


class Hparams(NamedTuple):
    lr: jax.Array  # [] in the params' dtype; [nets] in a sweep
    weight_decay: jax.Array


class TrainState(NamedTuple):
    params: Params
    opt_state: optax.OptState


class TrainOutput(NamedTuple):
    params: Params  # final parameters
    history: Metrics  # [epochs] each
    final: SplitMetrics  # after the last update, on every split


class TrainResult(NamedTuple):
    """``fit``'s answer, on the host."""

    params: Params
    history: Metrics  # numpy [epochs] each, in the params' dtype
    final: SplitMetrics  # Python floats
    compile_seconds: float
    train_seconds: float


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or parameter."""


SPLITS = SplitBatches._fields  # ("train", "val", "test")
METRICS = Metrics._fields  # ("loss", "accuracy")


def make_optimizer(hparams: Hparams) -> optax.GradientTransformation:
    """torch ``Adam(lr, weight_decay=wd)``: L2 *coupled* to the gradient.

    torch adds ``wd * w`` to the gradient before the moments, which is
    ``add_decayed_weights`` ahead of ``adam``. ``optax.adamw`` decays the weights
    after the moments (decoupled) and would not match. The optimiser holds no
    hyperparameter in its state, so it can be built inside a traced function
    from traced ``hparams``.
    """
    return optax.chain(optax.add_decayed_weights(hparams.weight_decay), optax.adam(hparams.lr))


def hparams_of(config: TrainConfig, dtype: Any = jnp.float32) -> Hparams:
    """The config's lr and weight decay as arrays (numpy: nothing is compiled to make them)."""
    return Hparams(np.asarray(config.lr, dtype), np.asarray(config.weight_decay, dtype))


def loss_and_accuracy(outputs: jax.Array, labels: jax.Array) -> Metrics:
    """torch ``CrossEntropyLoss`` (softmax-CE, mean over rows) and argmax accuracy.

    With the blog's sigmoid head ``outputs`` lie in (0, 1), so the loss cannot go
    below -log(e / (e + 2)) ~= 0.5514 for three classes.
    """
    loss = optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()
    # A float32 fraction of the rows: 78/120 comes out 0.65000004 here, 0.64999998 in torch
    # (one ulp apart; XLA:CPU's division is not correctly rounded). Tests compare counts.
    accuracy = (jnp.argmax(outputs, axis=-1) == labels).mean(dtype=outputs.dtype)
    return Metrics(loss, accuracy)


def init_state(params: Params, hparams: Hparams) -> TrainState:
    return TrainState(params, make_optimizer(hparams).init(params))


def train_step(
    state: TrainState, batch: Batch, hparams: Hparams, model: Any
) -> tuple[TrainState, Metrics]:
    """One full-batch epoch: metrics of the current params, then one Adam update."""

    def loss_fn(params: Params) -> tuple[jax.Array, Metrics]:
        metrics = loss_and_accuracy(model.apply(params, batch.x), batch.y)
        return metrics.loss, metrics

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = make_optimizer(hparams).update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state), metrics


def run_epochs(
    state: TrainState, batch: Batch, hparams: Hparams, num_epochs: int, model: Any
) -> tuple[TrainState, Metrics]:
    """``num_epochs`` train steps fused into one ``lax.scan``; metrics stacked [num_epochs]."""

    def body(carry: TrainState, _: None) -> tuple[TrainState, Metrics]:
        return train_step(carry, batch, hparams, model)

    return jax.lax.scan(body, state, None, length=num_epochs)


def split_metrics(params: Params, batches: SplitBatches, model: Any) -> SplitMetrics:
    """Loss and accuracy on every split: the blog's final table."""
    return SplitMetrics(
        *(loss_and_accuracy(model.apply(params, batch.x), batch.y) for batch in batches)
    )


TrainFn = Callable[[jax.Array, SplitBatches, Hparams], TrainOutput]


def make_train(config: TrainConfig) -> TrainFn:
    """A pure ``train(key, batches, hparams) -> TrainOutput`` for the whole run.

    ``config`` fixes what shapes the program (arch, head, epochs); ``hparams`` are
    data. A sweep is ``jax.jit(jax.vmap(train))``; ``config.lr`` and
    ``config.weight_decay`` are not read here.
    """
    model = get_model(config.arch, config.head)

    def train(key: jax.Array, batches: SplitBatches, hparams: Hparams) -> TrainOutput:
        params = init_params(config.arch, key, hparams.lr.dtype)
        state, history = run_epochs(
            init_state(params, hparams), batches.train, hparams, config.epochs, model
        )
        return TrainOutput(state.params, history, split_metrics(state.params, batches, model))

    return train


def as_key(seed: int | jax.Array) -> jax.Array:
    """An integer seed becomes ``jax.random.key(seed)``; a key passes through."""
    return jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed


def as_batch(data: Dataset, dtype: Any = jnp.float32) -> Batch:
    """Rows as arrays of ``dtype`` (numpy; they move to the device with the first call)."""
    return Batch(np.asarray(data.x, dtype), np.asarray(data.y, np.int32))


def split_batches(split: Split, dtype: Any = jnp.float32) -> SplitBatches:
    return SplitBatches(*(as_batch(part, dtype) for part in split))


def chunk_lengths(epochs: int, log_every: int) -> list[int]:
    full, rest = divmod(epochs, log_every)
    return [log_every] * full + ([rest] if rest else [])


def _run_chunk(
    state: TrainState, batches: SplitBatches, hparams: Hparams, num_epochs: int, model: Any
) -> tuple[TrainState, Metrics, jax.Array, SplitMetrics]:
    """``run_epochs`` on the train split, then two things ``fit`` needs without another program:

    a flag saying whether every parameter is still finite (checked on device), and
    the metrics on every split after the chunk (the final table, after the last).
    """
    state, metrics = run_epochs(state, batches.train, hparams, num_epochs, model)
    leaves = jax.tree_util.tree_leaves(state.params)
    finite = jnp.stack([jnp.isfinite(leaf).all() for leaf in leaves]).all()
    return state, metrics, finite, split_metrics(state.params, batches, model)


def _check_finite(metrics: Metrics, params_finite: bool, epoch_offset: int) -> None:
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


ProgressFn = Callable[[int, float, float], None]  # (epochs done, loss, accuracy)


def fit(
    config: TrainConfig,
    init_params: Params | None = None,
    split: Split | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train one net as the blog does: the pieces of ``make_train``, run chunk by chunk.

    Epochs run in compiled ``lax.scan`` chunks of ``config.log_every`` so that
    ``progress(epoch, loss, accuracy)`` can be called between chunks without a
    host round trip every epoch. ``init_params`` starts from given weights (for
    example converted from PyTorch) instead of ``jax.random.key(config.seed)``.

    Raises:
        DivergenceError: the loss or a parameter became NaN or infinite.
    """
    split = split if split is not None else load_split(config.split_seed)
    model = get_model(config.arch, config.head)
    start = time.perf_counter()
    if init_params is None:
        dtype = jnp.float32
        hparams = hparams_of(config, dtype)
        start_args = (np.uint32(config.seed), hparams)
        lowered_start = _start_jit.lower(registry.arch_spec(config.arch), *start_args)
    else:
        params = jax.tree_util.tree_map(jnp.asarray, init_params)
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        hparams = hparams_of(config, dtype)
        start_args = (params, hparams)
        lowered_start = _init_state_jit.lower(*start_args)
    batches = split_batches(split, dtype)
    lengths = chunk_lengths(config.epochs, config.log_every)
    lowered = [lowered_start] + [
        jax.jit(functools.partial(_run_chunk, num_epochs=n, model=model)).lower(
            lowered_start.out_info, batches, hparams
        )
        for n in sorted(set(lengths))
    ]
    start_program, *programs = (program.compile() for program in lowered)
    compiled = dict(zip(sorted(set(lengths)), programs))
    compile_seconds = time.perf_counter() - start
    state = start_program(*start_args)

    start = time.perf_counter()
    chunks, done = [], 0
    for n in lengths:
        state, metrics, params_finite, final = compiled[n](state, batches, hparams)
        _check_finite(metrics, bool(params_finite), done)
        chunks.append(metrics)
        done += n
        if progress is not None:
            loss, accuracy = jax.device_get((metrics.loss, metrics.accuracy))
            progress(done, float(loss[-1]), float(accuracy[-1]))
    train_seconds = time.perf_counter() - start

    history = Metrics(*(np.concatenate([np.asarray(c[i]) for c in chunks]) for i in range(2)))
    return TrainResult(state.params, history, to_host(final), compile_seconds, train_seconds)


# The compiled helpers below are cached on the registry entry (an ArchSpec), not the
# arch's name, so a name registered again with another module is compiled afresh.
@functools.partial(jax.jit, static_argnums=0)
def _start_jit(spec: registry.ArchSpec, seed: jax.Array, hparams: Hparams) -> TrainState:
    """Initial params (torch-style, from ``jax.random.key(seed)``) and optimiser state."""
    return init_state(init_params(spec.name, jax.random.key(seed)), hparams)


_init_state_jit = jax.jit(init_state)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _metrics_jit(
    spec: registry.ArchSpec, head: str, params: Params, batches: SplitBatches
) -> SplitMetrics:
    return split_metrics(params, batches, get_model(spec.name, head))


def to_host(metrics: SplitMetrics) -> SplitMetrics:
    """Device scalars to Python floats, same shape."""
    return jax.tree_util.tree_map(float, jax.device_get(metrics))


def evaluate(config: TrainConfig, params: Params, split: Split | None = None) -> SplitMetrics:
    """Loss and accuracy on each split (``config.split_seed``'s unless ``split`` is given).

    The config says the arch and, as important, the head the params were trained with.
    """
    split = split if split is not None else load_split(config.split_seed)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    spec = registry.arch_spec(config.arch)
    return to_host(_metrics_jit(spec, config.head, params, split_batches(split, dtype)))


def metrics_dict(metrics: SplitMetrics) -> dict[str, dict[str, Any]]:
    """``{"train": {"loss": ..., "accuracy": ...}, ...}``: the shape JSON and checkpoints keep."""
    return {split: part._asdict() for split, part in zip(SPLITS, metrics)}


def metrics_from_dict(values: dict[str, dict[str, Any]]) -> SplitMetrics:
    return SplitMetrics(*(Metrics(**values[split]) for split in SPLITS))
