"""One net's whole training as one fused program: hand-written backward, flat Adam.

The same maths as ``jax_iris.train.run_epochs`` (autodiff through the Flax modules of
``jax_iris.models``, then optax's coupled-L2 Adam), restated for speed on XLA:CPU:

- every parameter lives in one flat vector per net, so Adam is one elementwise pass;
- inside it each dense layer's kernel is laid out [out, in] (torch's ``weight``) with its
  bias as one more column, and activations [features, rows] with a row of ones below, so
  every forward dot is ``kernel @ x`` and adds the bias, and one dot gives both gradients;
- the backward is written out by hand, and the transposed kernels it multiplies by go
  through ``lax.optimization_barrier``, so XLA keeps them as plain dots instead of
  folding them back into transposed dots (which it hands to a slower kernel).

Per epoch, on all rows (x_t [4, rows]; ``@`` contracts the kernel's last axis)::

    dense(h)     = [K b] @ [h; 1]  =  K @ h + b[:, None]
    attention(h) = relu(softmax(k * q / s, axis=features) * v),  [k; q; v] = dense(h)
                   s = sqrt(float32(features)), cast to the params' dtype (as the blog)
    atten net    : dense(attention_20(attention_10(x_t)))        (``linear`` layer)
    linear net   : dense(relu(dense(relu(dense(x_t)))))
    p            = head(net(x_t))  [3, rows]: sigmoid, or the logits as they are
    loss         = mean over rows of logsumexp(p) - p[y]         (softmax cross-entropy)

and then, with g the gradient (torch ``Adam(lr, weight_decay)``, optax's order)::

    g = g + wd * w;  m = (1 - b1) g + b1 m;  v = (1 - b2) g^2 + b2 v;  t = t + 1
    w = w + (-lr) * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

The params outside keep the Flax tree (``kernel`` [in, out]); ``to_state`` converts
params and optax state in, ``to_params`` and ``to_opt_state`` back out, all exactly.
Only the built-in archs and heads are served (``supports``); other registered archs
keep autodiff.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax

from jax_iris import registry
from jax_iris.models import Params
from jax_iris.train import Metrics

B1, B2, EPS = 0.9, 0.999, 1e-8  # optax.adam's defaults, which are torch Adam's
KQV = ("k", "q", "v")
_MODULES = {"atten": "jax_iris.models:AttentionNet", "linear": "jax_iris.models:LinearNet"}
_HEADS = {"sigmoid": "jax.nn:sigmoid", "logits": "jax_iris.models:identity"}


class FusedState(NamedTuple):
    """One net's parameters and Adam state; a vmapped group adds a leading [nets] axis."""

    w: jax.Array  # [P] layer by layer, each [out, in + 1]: the kernel, its bias last
    m: jax.Array  # [P] Adam's first moment (optax's ``mu``), laid out as ``w``
    v: jax.Array  # [P] Adam's second moment (optax's ``nu``)
    count: jax.Array  # int32 [] updates taken, as optax counts them


class _Block(NamedTuple):
    """One matmul: a dense layer, or an attention layer's k, q, v stacked [3 * out, in + 1]."""

    layer: str
    parts: tuple[str, ...]  # the sub-modules stacked, () for a plain dense layer
    fan_in: int
    features: int  # outputs of each part

    @property
    def width(self) -> int:
        return self.features * max(len(self.parts), 1)

    @property
    def size(self) -> int:
        return self.width * (self.fan_in + 1)


_BLOCKS = {
    "atten": (
        _Block("layer_1", KQV, 4, 10),
        _Block("layer_2", KQV, 10, 20),
        _Block("linear", (), 20, 3),
    ),
    "linear": (
        _Block("layer_1", (), 4, 10),
        _Block("layer_2", (), 10, 20),
        _Block("layer_3", (), 20, 3),
    ),
}


def supports(arch: str, head: str) -> bool:
    """Whether this program serves ``arch`` with ``head``: the built-in nets and heads only."""
    arch_spec, head_spec = registry.ARCHS.get(arch), registry.HEADS.get(head)
    if arch_spec is None or head_spec is None or arch not in _MODULES or head not in _HEADS:
        return False
    same = registry.resolve(arch_spec.module) is registry.resolve(_MODULES[arch])
    return same and registry.resolve(head_spec.function) is registry.resolve(_HEADS[head])


def num_params(arch: str) -> int:
    """P, the length of the flat vector."""
    return sum(block.size for block in _blocks(arch))


def _blocks(arch: str) -> tuple[_Block, ...]:
    if arch not in _BLOCKS:
        raise ValueError(f"the fused program serves {', '.join(_BLOCKS)}, not {arch!r}")
    return _BLOCKS[arch]


def _pack(blocks: tuple[_Block, ...], tree: Params) -> jax.Array:
    pieces = []
    for block in blocks:
        layer = tree["params"][block.layer]
        dense = [layer[part] for part in block.parts] if block.parts else [layer]
        kernel = jnp.concatenate([d["kernel"].T for d in dense])
        bias = jnp.concatenate([d["bias"] for d in dense])
        pieces.append(jnp.concatenate([kernel, bias[:, None]], axis=1).ravel())
    return jnp.concatenate(pieces)


def _kernels(blocks: tuple[_Block, ...], w: jax.Array) -> list[jax.Array]:
    """Each block's [kernel bias] [width, in + 1], sliced out of w [P]."""
    out, start = [], 0
    for block in blocks:
        out.append(w[start : start + block.size].reshape(block.width, block.fan_in + 1))
        start += block.size
    return out


def to_state(arch: str, params: Params, opt_state: optax.OptState | None = None) -> FusedState:
    """The flat state of ``params`` and the optimiser state of ``train.make_optimizer``.

    Without ``opt_state``: zero moments and count 0, what optax's ``init`` gives.
    """
    blocks = _blocks(arch)
    w = _pack(blocks, params)
    if opt_state is None:
        return FusedState(w, jnp.zeros_like(w), jnp.zeros_like(w), jnp.zeros([], jnp.int32))
    (adam,) = [
        s
        for s in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_adam)
        if isinstance(s, optax.ScaleByAdamState)
    ]
    count = cast(jax.Array, adam.count)  # optax types it ArrayLike; it is an int32 array
    return FusedState(w, _pack(blocks, adam.mu), _pack(blocks, adam.nu), count)


def _is_adam(node: Any) -> bool:
    return isinstance(node, optax.ScaleByAdamState)


def to_opt_state(arch: str, state: FusedState, like_opt_state: optax.OptState) -> optax.OptState:
    """``like_opt_state`` with its Adam moments and count taken from ``state``: the inverse
    of ``to_state``'s reading of the optimiser state, bit for bit.

    ``like_opt_state`` gives the structure (``train.make_optimizer``'s chain); its one
    ``ScaleByAdamState`` is replaced, every other node kept as it is (they hold no arrays).
    """
    adam = optax.ScaleByAdamState(
        count=state.count,
        mu=to_params(arch, state._replace(w=state.m)),
        nu=to_params(arch, state._replace(w=state.v)),
    )
    found = [s for s in jax.tree_util.tree_leaves(like_opt_state, is_leaf=_is_adam) if _is_adam(s)]
    if len(found) != 1:
        raise ValueError(f"expected one Adam state in the optimiser state, found {len(found)}")
    return jax.tree_util.tree_map(
        lambda node: adam if _is_adam(node) else node, like_opt_state, is_leaf=_is_adam
    )


def to_params(arch: str, state: FusedState) -> Params:
    """The Flax params tree (``kernel`` [in, out], ``bias`` [out]) of ``state.w``."""
    tree = {}
    for block, kernel in zip(_blocks(arch), _kernels(_blocks(arch), state.w)):
        n = len(block.parts) or 1
        dense = [{"kernel": k[:, :-1].T, "bias": k[:, -1]} for k in jnp.split(kernel, n)]
        tree[block.layer] = dict(zip(block.parts, dense)) if block.parts else dense[0]
    return {"params": tree}


def _scale(features: int, dtype: Any) -> jax.Array:
    """The blog's ``torch.sqrt(torch.tensor(features))``: a float32 square root, then cast."""
    return jnp.sqrt(jnp.asarray(features, jnp.float32)).astype(dtype)


def _gate(kqv: jax.Array, features: int) -> tuple[jax.Array, ...]:
    """(k, q, v, gate, gate * v) of an attention layer from kqv [3 * features, rows]."""
    k, q, v = jnp.split(kqv, 3)
    gate = jax.nn.softmax(k * q / _scale(features, kqv.dtype), axis=0)
    return k, q, v, gate, gate * v


def _gate_grad(kqv: jax.Array, dout: jax.Array, features: int) -> jax.Array:
    """The gradient at kqv [3 * features, rows] of relu(gate * v), given its gradient dout."""
    k, q, v, gate, u = _gate(kqv, features)
    du = jnp.where(u > 0, dout, 0)
    d_gate = du * v
    ds = gate * (d_gate - jnp.sum(gate * d_gate, axis=0, keepdims=True))
    scale = _scale(features, kqv.dtype)
    return jnp.concatenate([ds * q / scale, ds * k / scale, du * gate])


def _transposed(kernel: jax.Array) -> jax.Array:
    """kernel.T [in, out], materialised so that ``kernel.T @ dz`` stays a plain dot."""
    return jax.lax.optimization_barrier(kernel.T)


def loss_and_grad(
    arch: str, head: str, w: jax.Array, x_t: jax.Array, onehot: jax.Array
) -> tuple[Metrics, jax.Array]:
    """Loss and accuracy of w [P] on x_t [4, rows], and the loss's gradient [P].

    ``onehot`` [3, rows] holds the labels. Backward, with dp = (softmax(p) - onehot) / rows:
    the sigmoid head multiplies by p (1 - p); a dense layer gives [dK db] = dz @ [h; 1].T
    and dh = K.T @ dz; relu passes dz where its input is > 0; the
    gate a = softmax(s) gives ds = a * (da - sum over features of a * da), with
    da = du * v, dv = du * a, dk = ds * q / s, dq = ds * k / s.
    """
    blocks = _blocks(arch)
    weights = _kernels(blocks, w)
    inputs, outputs, h = [], [], x_t
    for i, (block, kernel) in enumerate(zip(blocks, weights)):
        h = jnp.concatenate([h, jnp.ones((1, h.shape[-1]), h.dtype)])
        z = kernel @ h
        inputs.append(h)
        outputs.append(z)
        if i == len(blocks) - 1:
            h = z
        elif block.parts:
            h = jax.nn.relu(_gate(z, block.features)[-1])
        else:
            h = jax.nn.relu(z)
    p = jax.nn.sigmoid(h) if head == "sigmoid" else h
    log_normalizer = jax.nn.logsumexp(p, axis=0, keepdims=True)
    loss = jnp.mean(log_normalizer[0] - jnp.sum(onehot * p, axis=0))
    accuracy = (jnp.argmax(p, axis=0) == jnp.argmax(onehot, axis=0)).mean(dtype=p.dtype)

    dz = (jnp.exp(p - log_normalizer) - onehot) / p.shape[-1]
    if head == "sigmoid":
        dz = dz * p * (1 - p)
    grads = []
    for i in reversed(range(len(blocks))):
        grads.append((dz @ inputs[i].T).ravel())
        if i == 0:
            break
        dh = _transposed(weights[i][:, :-1]) @ dz
        below, z = blocks[i - 1], outputs[i - 1]
        dz = _gate_grad(z, dh, below.features) if below.parts else jnp.where(z > 0, dh, 0)
    return Metrics(loss, accuracy), jnp.concatenate(grads[::-1])


def adam_update(
    state: FusedState, grad: jax.Array, lr: jax.Array, weight_decay: jax.Array
) -> FusedState:
    """``optax.chain(add_decayed_weights(wd), adam(lr))`` then ``apply_updates``, flat.

    Each expression is optax's own (``scale_by_adam``, ``bias_correction``,
    ``scale_by_learning_rate``), in its order, so the results are the same numbers.
    """
    g = grad + weight_decay * state.w
    m = (1 - B1) * g + B1 * state.m
    v = (1 - B2) * g**2 + B2 * state.v
    # optax >= 0.2.4: safe_increment. Typed ArrayLike; an array in, an array out.
    count = cast(jax.Array, optax.safe_int32_increment(state.count))
    m_hat = m / (1 - B1**count).astype(m.dtype)
    v_hat = v / (1 - B2**count).astype(v.dtype)
    step = (-1 * lr) * (m_hat / (jnp.sqrt(v_hat + 0.0) + EPS))
    return FusedState(jnp.asarray(state.w + step).astype(state.w.dtype), m, v, count)


def run_epochs(
    arch: str,
    head: str,
    state: FusedState,
    x: jax.Array,
    y: jax.Array,
    lr: jax.Array,
    weight_decay: jax.Array,
    num_epochs: int,
) -> tuple[FusedState, Metrics]:
    """``num_epochs`` full-batch epochs in one ``lax.scan``, as ``train.run_epochs`` does.

    x float [rows, 4] in the params' dtype, y int32 [rows]; lr and weight_decay scalars.
    Metrics [num_epochs] each, measured on the params before each epoch's update.
    """
    if not supports(arch, head):
        raise ValueError(f"the fused program does not serve arch {arch!r} with head {head!r}")
    x_t = x.T
    onehot = jax.nn.one_hot(y, 3, dtype=x.dtype, axis=0)

    def epoch(carry: FusedState, _: None) -> tuple[FusedState, Metrics]:
        metrics, grad = loss_and_grad(arch, head, carry.w, x_t, onehot)
        return adam_update(carry, grad, lr, weight_decay), metrics

    return jax.lax.scan(epoch, state, None, length=num_epochs)
