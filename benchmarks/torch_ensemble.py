"""PyTorch peers of the JAX sweep: N of the blog's nets stacked and trained together.

Net i is the package's PyTorch reference net (``jax_iris.pytorch.reference``) built
after ``torch.manual_seed(seed + i)``; its weights go into one stack ``[N, in, out]``
(the k, q, v kernels of an attention layer side by side: ``[N, in, 3 * out]``), the
forward pass is batched matmuls, and each net follows torch ``Adam(lr, weight_decay)``
on its own mean cross-entropy (Adam is elementwise, so one update over the stacks is N
separate optimisers). The ways to run it:

- ``train_eager``: autograd and ``torch.optim.Adam``, as a PyTorch user would write it;
- method ``autograd``: the forward and loss under ``torch.compile`` (its backward
  compiled by AOTAutograd), then a compiled Adam step written out;
- method ``manual``: forward, a hand-written backward and Adam as ONE compiled
  function, the strongest CPU peer measured here.

The compiled methods run nets in chunks, over ``processes`` spawned workers of
``threads`` torch threads each; compile and warm-up are timed apart from execution.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

NUM_CLASSES = 3
LR, WEIGHT_DECAY = 0.005, 1e-3  # the blog's Adam
BETAS, EPS = (0.9, 0.999), 1e-8  # torch Adam defaults
METHODS = ("autograd", "manual")
SEARCH_CHUNKS = (16, 32, 64, 128, 256)
SEARCH_LAYOUTS = ((1, 1), (1, 2), (2, 1))  # (processes, threads per process)
WARMUP_EPOCHS = 3
BARRIER_SECONDS = 900  # a worker that dies while compiling breaks the barrier
ORPHAN_POLL_SECONDS = 0.5  # how often a worker checks that the process that spawned it lives

Tensors = list[torch.Tensor]  # [w1, b1, w2, b2, w3, b3]: w [N, in, out], b [N, 1, out]


class EnsembleRun(NamedTuple):
    loss: np.ndarray  # float [N, epochs], each net's loss before that epoch's update
    correct: np.ndarray  # int [N, epochs], training rows classified right
    params: list[np.ndarray]  # final weights, as ``init_params`` lays them out
    compile_seconds: float  # spawn excluded: compile + warm-up, slowest worker
    run_seconds: float  # execution, wall clock over all workers


class Setting(NamedTuple):
    chunk: int  # nets per compiled call
    processes: int
    threads: int  # torch threads per process


DEFAULT_SETTING = Setting(32, 2, 1)  # the fastest on the 2-core benchmark machine


def init_params(arch: str, nets: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensors:
    """The reference nets ``build(arch, seed=seed + i)``, i < ``nets``, as stacks.

    Each of the net's layers (its direct children, in order) gives ``w`` [N, in, out]
    (every ``nn.Linear`` of the layer transposed, side by side: k, q, v for attention)
    and ``b`` [N, 1, out]. Drawn in float32 as torch does, then cast to ``dtype``.
    """
    from jax_iris.pytorch import reference

    stacks: list[Tensors] = []
    with torch.no_grad():
        for i in range(nets):
            net = reference.build(arch, seed=seed + i, dtype=dtype)
            tensors = []
            for layer in net.children():
                linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
                tensors.append(torch.cat([linear.weight.T for linear in linears], dim=1))
                tensors.append(torch.cat([linear.bias for linear in linears])[None])
            stacks.append(tensors)
        return [torch.stack(layer) for layer in zip(*stacks)]


def _attention_scale(width: int) -> float:
    """The blog's ``torch.sqrt(torch.tensor(float(width)))``: a float32 square root, even
    in float64 (as ``reference.ElementwiseAttention``); a constant once compiled."""
    return float(np.sqrt(np.float32(width)))


def _hidden(arch: str, z: torch.Tensor) -> torch.Tensor:
    """One hidden layer after its matmul, z [N, out, rows]: ReLU or the blog's feature gate."""
    if arch != "atten":
        return torch.relu(z)
    k, q, v = z.chunk(3, dim=1)
    gate = torch.softmax(k * q / _attention_scale(k.shape[1]), dim=1)  # over the feature axis
    return torch.relu(gate * v)


def _forward(
    arch: str, head: str, p: Tensors, x: torch.Tensor
) -> tuple[torch.Tensor, Tensors, Tensors]:
    """Outputs [N, 3, rows] on x [rows, 4], each layer's input and pre-activation.

    Activations are laid out [net, feature, row]: the rows on the minor axis vectorise
    the elementwise work (measured ~1.3x faster than [net, row, feature] under inductor).
    """
    inputs, pre = [x.T.expand(p[0].shape[0], *x.T.shape)], []
    for w, b in zip(p[0:-2:2], p[1:-2:2]):
        pre.append(torch.baddbmm(b.transpose(1, 2), w.transpose(1, 2), inputs[-1]))
        inputs.append(_hidden(arch, pre[-1]))
    z = torch.baddbmm(p[-1].transpose(1, 2), p[-2].transpose(1, 2), inputs[-1])
    return (torch.sigmoid(z) if head == "sigmoid" else z), inputs, pre


def loss_and_correct(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each net's ``CrossEntropyLoss`` (mean over rows) [N] and correct count [N].

    ``out`` is [N, 3, rows]: the classes on axis 1.
    """
    picked = out.gather(1, y.expand(out.shape[0], 1, -1))[:, 0]
    return (torch.logsumexp(out, 1) - picked).mean(-1), (out.argmax(1) == y).sum(-1)


def _adam(p: Tensors, g: Tensors, m: Tensors, v: Tensors, step: torch.Tensor, lr: float, wd: float):
    """torch Adam's single-tensor update, in place.

    ``step`` is a float64 tensor counting from 1 (a tensor, so the compiled function is
    not re-specialised every epoch); the scalars are worked out in float64 and used in
    the params' dtype, as torch does with its Python-float step size.
    """
    step_size = (lr / (1 - BETAS[0] ** step)).to(p[0].dtype)
    bias2_sqrt = (1 - BETAS[1] ** step).sqrt().to(p[0].dtype)
    for pi, gi, mi, vi in zip(p, g, m, v):
        gi = gi + wd * pi  # coupled L2, before the moments
        mi.lerp_(gi, 1 - BETAS[0])
        vi.mul_(BETAS[1]).addcmul_(gi, gi, value=1 - BETAS[1])
        pi.addcdiv_(mi, (vi.sqrt() / bias2_sqrt).add_(EPS), value=-step_size)


def _manual_step(arch: str, head: str, lr: float, wd: float) -> Callable:
    """``step(p, m, v, x, y, step) -> (loss, correct)``: forward, hand-written backward, Adam."""

    def step(p: Tensors, m: Tensors, v: Tensors, x, y, t) -> tuple[torch.Tensor, torch.Tensor]:
        out, inputs, pre = _forward(arch, head, p, x)
        loss, correct = loss_and_correct(out, y)
        # d(mean CE)/d out = (softmax(out) - onehot(y)) / rows, per net.
        onehot = torch.nn.functional.one_hot(y, NUM_CLASSES).T.to(out.dtype)
        dz = (torch.softmax(out, 1) - onehot) / y.shape[-1]
        if head == "sigmoid":
            dz = dz * out * (1 - out)
        grads = [inputs[-1] @ dz.transpose(1, 2), dz.sum(2)[:, None]]
        dh = p[-2] @ dz
        for i in reversed(range(len(pre))):
            if arch == "atten":
                zk, zq, zv = pre[i].chunk(3, dim=1)
                scale = _attention_scale(zk.shape[1])
                gate = torch.softmax(zk * zq / scale, dim=1)
                da = dh * (gate * zv > 0)
                dgate = da * zv
                ds = gate * (dgate - (dgate * gate).sum(1, keepdim=True)) / scale
                dz = torch.cat([ds * zq, ds * zk, da * gate], dim=1)
            else:
                dz = dh * (pre[i] > 0)
            grads[:0] = [inputs[i] @ dz.transpose(1, 2), dz.sum(2)[:, None]]
            if i:
                dh = p[2 * i] @ dz
        _adam(p, grads, m, v, t, lr, wd)
        return loss, correct

    return step


def make_step(method: str, arch: str, head: str, lr: float, wd: float) -> Callable:
    """``step(p, m, v, x, y, t) -> (loss [N], correct [N])``: one epoch, in place, compiled."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "manual":
        return torch.compile(_manual_step(arch, head, lr, wd), fullgraph=True, dynamic=False)

    def loss_fn(p: Tensors, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        return loss_and_correct(_forward(arch, head, p, x)[0], y)

    def adam(p: Tensors, m: Tensors, v: Tensors, t) -> None:
        _adam(p, [q.grad for q in p], m, v, t, lr, wd)

    loss_fn, adam = torch.compile(loss_fn, dynamic=False), torch.compile(adam, dynamic=False)

    def step(p: Tensors, m: Tensors, v: Tensors, x, y, t) -> tuple[torch.Tensor, torch.Tensor]:
        for q in p:
            q.requires_grad_().grad = None
        loss, correct = loss_fn(p, x, y)
        loss.sum().backward()  # each net's gradient is that of its own mean loss
        with torch.no_grad():
            adam(p, m, v, t)
        return loss.detach(), correct

    return step


def train_eager(
    arch: str,
    p: Tensors,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    *,
    head: str = "sigmoid",
    lr: float = LR,
    weight_decay: float = WEIGHT_DECAY,
) -> torch.Tensor:
    """Autograd and one ``torch.optim.Adam`` over the stacks, in place on ``p`` (made leaves
    that require grad); each net's loss before each epoch's update [N, epochs]."""
    for q in p:
        q.requires_grad_()
    optimizer = torch.optim.Adam(p, lr=lr, weight_decay=weight_decay)
    losses = torch.empty(epochs, p[0].shape[0], dtype=p[0].dtype)
    for epoch in range(epochs):
        loss, _ = loss_and_correct(_forward(arch, head, p, x)[0], y)
        optimizer.zero_grad()
        loss.sum().backward()  # each net's gradient is that of its own mean loss
        optimizer.step()
        losses[epoch] = loss.detach()
    return losses.T


def train_chunk(
    step: Callable, p: Tensors, x: torch.Tensor, y: torch.Tensor, epochs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``epochs`` steps on one chunk, in place; per-epoch loss and correct counts [N, epochs]."""
    m, v = [torch.zeros_like(q) for q in p], [torch.zeros_like(q) for q in p]
    losses = torch.empty(epochs, p[0].shape[0], dtype=p[0].dtype)
    correct = torch.empty(epochs, p[0].shape[0], dtype=torch.long)
    for epoch in range(epochs):
        losses[epoch], correct[epoch] = step(
            p, m, v, x, y, torch.tensor(epoch + 1.0, dtype=torch.float64)
        )
    return losses.T, correct.T


def _exit_when_orphaned(parent: int) -> None:
    """End this worker once ``parent`` is gone (killed, or stopped by a signal it does not
    forward): its results have no one to go to, and it would hold the cores for minutes."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker(rank: int, args: tuple, threads: int, barrier, queue, parent: int) -> None:
    _exit_when_orphaned(parent)
    torch.set_num_threads(threads)
    method, arch, head, lr, wd, epochs, chunks, x, y = args
    chunks = [[torch.from_numpy(a) for a in c] for c in chunks]
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    start = time.perf_counter()
    step = make_step(method, arch, head, lr, wd)
    train_chunk(step, [q.clone() for q in chunks[0]], x, y, WARMUP_EPOCHS)
    warm = time.perf_counter() - start
    barrier.wait()
    hist = [train_chunk(step, c, x, y, epochs) for c in chunks]
    out = [[q.detach().numpy() for q in c] for c in chunks]
    queue.put((rank, warm, [(h[0].numpy(), h[1].numpy()) for h in hist], out))


def train_ensemble(
    x: np.ndarray,
    y: np.ndarray,
    params: Sequence[np.ndarray],
    epochs: int,
    *,
    arch: str = "atten",
    head: str = "sigmoid",
    method: str = "manual",
    setting: Setting = DEFAULT_SETTING,
    lr: float = LR,
    weight_decay: float = WEIGHT_DECAY,
) -> EnsembleRun:
    """Train the nets whose weights ``params`` (``init_params``, as numpy) holds, on x [rows, 4].

    Nets are cut into equal chunks (the last padded with repeats), an equal share per
    worker; each worker is a spawned process, so torch's threads never meet XLA's.
    """
    nets, workers = params[0].shape[0], setting.processes
    per_worker = -(-nets // (setting.chunk * workers))
    chunk = -(-nets // (per_worker * workers))
    idx = np.arange(per_worker * workers * chunk) % nets
    chunks = [
        [np.ascontiguousarray(a[idx[i : i + chunk]]) for a in params]
        for i in range(0, len(idx), chunk)
    ]
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(workers + 1, timeout=BARRIER_SECONDS), ctx.Queue()
    procs = []
    for rank in range(workers):
        share = chunks[rank * per_worker : (rank + 1) * per_worker]
        args = (method, arch, head, lr, weight_decay, epochs, share, x, y.astype(np.int64))
        procs.append(
            ctx.Process(
                target=_worker,
                args=(rank, args, setting.threads, barrier, queue, os.getpid()),
                daemon=True,
            )
        )
        procs[-1].start()
    barrier.wait()
    start = time.perf_counter()
    results = sorted(queue.get() for _ in procs)
    run_seconds = time.perf_counter() - start
    for proc in procs:
        proc.join()
    hist = [h for r in results for h in r[2]]
    out = [c for r in results for c in r[3]]
    return EnsembleRun(
        loss=np.concatenate([h[0] for h in hist])[:nets],
        correct=np.concatenate([h[1] for h in hist])[:nets],
        params=[np.concatenate([c[k] for c in out])[:nets] for k in range(len(params))],
        compile_seconds=max(r[1] for r in results),
        run_seconds=run_seconds,
    )


def search_settings(
    x: np.ndarray,
    y: np.ndarray,
    *,
    arch: str = "atten",
    method: str = "manual",
    nets: int = 1000,
    epochs: int = 50,
    chunks: Sequence[int] = SEARCH_CHUNKS,
    layouts: Sequence[tuple[int, int]] = SEARCH_LAYOUTS,
) -> tuple[Setting, dict[Setting, float]]:
    """Time every (chunk, processes, threads) on a short run; the fastest and all run seconds."""
    params = [a.numpy() for a in init_params(arch, nets)]
    times = {}
    for chunk, (processes, threads) in itertools.product(chunks, layouts):
        setting = Setting(chunk, processes, threads)
        run = train_ensemble(x, y, params, epochs, arch=arch, method=method, setting=setting)
        times[setting] = run.run_seconds
    return min(times, key=times.get), times


def time_setting(
    x: np.ndarray,
    y: np.ndarray,
    setting: Setting,
    *,
    arch: str = "atten",
    method: str = "manual",
    nets: int = 1000,
    epochs: int = 1000,
    repeats: int = 3,
) -> tuple[float, float]:
    """Median (compile + warm-up seconds, execution seconds) of ``repeats`` full runs."""
    params = [a.numpy() for a in init_params(arch, nets)]
    runs = [
        train_ensemble(x, y, params, epochs, arch=arch, method=method, setting=setting)
        for _ in range(repeats)
    ]
    return float(np.median([r.compile_seconds for r in runs])), float(
        np.median([r.run_seconds for r in runs])
    )


def max_loss_gap(
    x: np.ndarray,
    y: np.ndarray,
    *,
    arch: str = "atten",
    head: str = "sigmoid",
    nets: int = 4,
    epochs: int = 50,
    method: str = "manual",
) -> float:
    """Largest |loss difference| over nets and epochs between compiled ``method`` and
    ``train_eager``, both run in this process from the same float32 weights (about 1e-6
    for 50 epochs)."""
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    eager = train_eager(arch, init_params(arch, nets), xt, yt, epochs, head=head)
    step = make_step(method, arch, head, LR, WEIGHT_DECAY)
    compiled = train_chunk(step, init_params(arch, nets), xt, yt, epochs)[0]
    return float((eager.detach() - compiled.detach()).abs().max())
