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
from typing import Any, NamedTuple, cast

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


def host_array(values: np.ndarray) -> jax.Array:
    """``values`` unchanged, typed as the ``jax.Array`` it becomes at the jit boundary.

    ``Batch`` and ``Hparams`` are built as numpy on the host (nothing is compiled or
    sent to a device to make them); ``jit`` and ``device_put`` convert them, and in
    traced code every field is a ``jax.Array``.
    """
    return cast(jax.Array, values)


def hparams_of(config: TrainConfig, dtype: Any = jnp.float32) -> Hparams:
    """The config's lr and weight decay as arrays (numpy: nothing is compiled to make them)."""
    return Hparams(
        host_array(np.asarray(config.lr, dtype)), host_array(np.asarray(config.weight_decay, dtype))
    )


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
    return Batch(host_array(np.asarray(data.x, dtype)), host_array(np.asarray(data.y, np.int32)))


def split_batches(split: Split, dtype: Any = jnp.float32) -> SplitBatches:
    return SplitBatches(*(as_batch(part, dtype) for part in split))


# --- The group program: the one shape every net is trained in -------------------------
#
# float32 Adam turns one ulp into another outcome, and XLA compiles a vmapped batch of
# 2 nets to other kernels (other rounding) than a batch of 8. So every net, in a
# sweep of any size, on any number of devices or processes, and alone in ``fit``, is
# trained by the same compiled body: a group of exactly ``group`` nets (``vmap``),
# groups run one after another (``lax.map``), padded with copies where nets are
# fewer. Initialisation, epochs and the final table are separate programs with the
# state passed between them, so epochs can run in blocks of any length (measured:
# 200 epochs as one block, 2 x 100 or 4 x 50 agree bit for bit).
#
# With ``USE_FUSED`` (the default) the epochs of the nets ``jax_iris.fused`` serves run in
# its program (flat vector, hand-written backward, fused Adam); the TrainState goes in and
# comes out as ever, its conversions exact, so only the rounding inside a block differs
# from autodiff's (gradients equal within 1e-15 in float64; tests/test_fused.py). Set it
# False to train with autodiff and optax for every net.

USE_FUSED = True  # read by each ``programs`` call; True: the fused epochs where served


class Programs(NamedTuple):
    """The compiled pieces for one (arch, head, group); see ``programs``."""

    init: Callable  # (seeds uint32 [n], hparams [n]) -> TrainState [n]
    start: Callable  # (params [n], hparams [n]) -> TrainState [n]
    run: Callable  # (state [n], train Batch [n], hparams [n], num_epochs) -> (state, Metrics)
    table: Callable  # (params [n], SplitBatches [n]) -> SplitMetrics [n]
    group: int


def default_group_size(platform: str | None = None) -> int:
    """Nets per vmapped step: 8 on CPU (a group's activations stay in cache), 1024 on
    accelerators (one wide step). Fixed per platform, never derived from a sweep's size."""
    from jax_iris import platform as platforms

    return platforms.group_size(platform or jax.default_backend())


def padded_size(n: int, group: int) -> int:
    """``n`` rounded up to whole groups: the shape a call runs."""
    return -(-n // group) * group


def _group_map(fn: Callable, group: int) -> Callable:
    """``fn`` on one net, applied to [n, ...] inputs ``group`` nets at a time."""

    def mapped(*args: Any) -> Any:
        return jax.lax.map(lambda a: fn(*a), args, batch_size=group)

    mapped.__name__ = fn.__name__  # compile logs name the program: jit(init), jit(table)
    return mapped


def programs(spec: registry.ArchSpec, head: str, group: int) -> Programs:
    """The group programs, jitted once per process and cached here.

    Each runs on the device its inputs sit on: a sweep over several devices gives
    each device its share of the nets as separate calls of these same programs
    (measured: one program over a ``shard_map`` mesh of 2 CPU devices rounds
    differently from the same group on one device). Cached on the registry entry
    (an ``ArchSpec``), so a name registered again is compiled afresh, and on
    ``USE_FUSED`` as it is now.
    """
    return _programs(spec, head, group, USE_FUSED)


@functools.cache
def _programs(spec: registry.ArchSpec, head: str, group: int, use_fused: bool) -> Programs:
    from jax_iris import fused  # it imports this module's Metrics

    model = get_model(spec.name, head)
    arch = spec.name

    def init(seed: jax.Array, hparams: Hparams) -> TrainState:
        return init_state(init_params(arch, jax.random.key(seed), hparams.lr.dtype), hparams)

    def table(params: Params, batches: SplitBatches) -> SplitMetrics:
        return split_metrics(params, batches, model)

    def run(state: TrainState, batch: Batch, hparams: Hparams, num_epochs: int):
        def one(s: TrainState, b: Batch, h: Hparams) -> tuple[TrainState, Metrics]:
            return run_epochs(s, b, h, num_epochs, model)

        def one_fused(s: TrainState, b: Batch, h: Hparams) -> tuple[TrainState, Metrics]:
            flat = fused.to_state(arch, s.params, s.opt_state)
            flat, metrics = fused.run_epochs(
                arch, head, flat, b.x, b.y, h.lr, h.weight_decay, num_epochs
            )
            params = fused.to_params(arch, flat)
            return TrainState(params, fused.to_opt_state(arch, flat, s.opt_state)), metrics

        step = one_fused if use_fused and fused.supports(arch, head) else one
        return _group_map(step, group)(state, batch, hparams)

    return Programs(
        init=jax.jit(_group_map(init, group)),
        start=jax.jit(_group_map(init_state, group)),
        run=jax.jit(run, static_argnums=3),
        table=jax.jit(_group_map(table, group)),
        group=group,
    )


def epoch_blocks(epochs: int, block: int) -> list[int]:
    """``epochs`` as blocks of ``block`` and a remainder."""
    full, rest = divmod(epochs, block)
    return [block] * full + ([rest] if rest else [])


def _tile(tree: Any, n: int) -> Any:
    """Every leaf repeated along a new leading axis of length ``n``, on the host (numpy:
    a device op here would be one more compiled program per leaf)."""
    return jax.tree_util.tree_map(lambda a: np.broadcast_to(np.asarray(a), (n, *np.shape(a))), tree)


def _first(tree: Any) -> Any:
    """Net 0 of every leaf, fetched to the host and indexed there (no device program)."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[0], tree)


class _CompileTimer:
    """Seconds spent compiling while active (JAX reports each backend compile)."""

    seconds = 0.0
    _active: list[_CompileTimer] = []
    _registered = False

    def __enter__(self) -> _CompileTimer:
        if not _CompileTimer._registered:
            jax.monitoring.register_event_duration_secs_listener(_CompileTimer._listen)
            _CompileTimer._registered = True
        self._active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._active.remove(self)

    @staticmethod
    def _listen(event: str, duration_secs: float, **_: str | int) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            for timer in _CompileTimer._active:
                timer.seconds += duration_secs


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
    """Train one net as the blog does, in the sweep's group program (one real net).

    The net's params, history and final table are bit for bit those of the same
    net (seed, split seed, lr, weight decay, epochs) in any sweep on this platform.
    Epochs run in compiled blocks of ``config.log_every`` so that
    ``progress(epoch, loss, accuracy)`` can be called between blocks; a second
    ``fit`` of the same shapes compiles nothing. ``init_params`` starts from given
    weights (for example converted from PyTorch) instead of
    ``jax.random.key(config.seed)``.

    Matmuls run at ``config.matmul_precision`` ("highest": true float32 on GPUs too).

    Raises:
        DivergenceError: the loss or a parameter became NaN or infinite.
    """
    split = split if split is not None else load_split(config.split_seed)
    with _CompileTimer() as timer, jax.default_matmul_precision(config.matmul_precision):
        start = time.perf_counter()
        group = default_group_size()
        progs = programs(registry.arch_spec(config.arch), config.head, group)
        if init_params is None:
            dtype = jnp.float32
            hparams = _tile(hparams_of(config, dtype), group)
            state = progs.init(np.full(group, config.seed, np.uint32), hparams)
        else:
            params = jax.tree_util.tree_map(jnp.asarray, init_params)
            dtype = jax.tree_util.tree_leaves(params)[0].dtype
            hparams = _tile(hparams_of(config, dtype), group)
            state = progs.start(_tile(params, group), hparams)
        batches = _tile(split_batches(split, dtype), group)
        setup_seconds = time.perf_counter() - start

        start = time.perf_counter()
        chunks, done = [], 0
        for n in epoch_blocks(config.epochs, config.log_every):
            state, metrics = progs.run(state, batches.train, hparams, n)
            metrics = _first(metrics)
            params_finite = all(
                bool(np.isfinite(leaf).all())
                for leaf in jax.tree_util.tree_leaves(_first(state.params))
            )
            _check_finite(metrics, params_finite, done)
            chunks.append(metrics)
            done += n
            if progress is not None:
                progress(done, float(metrics.loss[-1]), float(metrics.accuracy[-1]))
        final = progs.table(state.params, batches)
        params = _first(state.params)
        final = to_host(_first(final))
        elapsed = time.perf_counter() - start + setup_seconds
    compile_seconds = min(timer.seconds, elapsed)
    history = Metrics(*(np.concatenate([np.asarray(c[i]) for c in chunks]) for i in range(2)))
    return TrainResult(params, history, final, compile_seconds, elapsed - compile_seconds)


def to_host(metrics: SplitMetrics) -> SplitMetrics:
    """Device scalars to Python floats, same shape."""
    return jax.tree_util.tree_map(float, jax.device_get(metrics))


def evaluate(config: TrainConfig, params: Params, split: Split | None = None) -> SplitMetrics:
    """Loss and accuracy on each split (``config.split_seed``'s unless ``split`` is given).

    The config says the arch and, as important, the head the params were trained with.
    Computed by the group program, so the figures are those ``fit`` and sweeps report.
    """
    split = split if split is not None else load_split(config.split_seed)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    group = default_group_size()
    progs = programs(registry.arch_spec(config.arch), config.head, group)
    batches = _tile(split_batches(split, dtype), group)
    with jax.default_matmul_precision(config.matmul_precision):
        return to_host(_first(progs.table(_tile(params, group), batches)))


def metrics_dict(metrics: SplitMetrics) -> dict[str, dict[str, Any]]:
    """``{"train": {"loss": ..., "accuracy": ...}, ...}``: the shape JSON and checkpoints keep."""
    return {split: part._asdict() for split, part in zip(SPLITS, metrics)}


def metrics_from_dict(values: dict[str, dict[str, Any]]) -> SplitMetrics:
    return SplitMetrics(*(Metrics(**values[split]) for split in SPLITS))
