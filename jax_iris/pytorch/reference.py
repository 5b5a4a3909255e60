"""The blog's experiment restated in PyTorch: the reference the JAX port is tested against.

The only module of the installed package that imports torch (the ``torch`` extra). It
holds the two nets (with the blog's attribute names, so their ``state_dict`` keys are
the blog's), its ``Adam(lr=0.005, weight_decay=1e-3)`` loop with ``CrossEntropyLoss``
applied to the sigmoid outputs, and its evaluation.
``python -m jax_iris.pytorch.reference`` trains both nets from ``torch.manual_seed``
weights and prints the blog's tables.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.datasets import load_iris
from torch import nn

from jax_iris import registry
from jax_iris.io.fileio import atomic_write

LR = 0.005
WEIGHT_DECAY = 1e-3
EPOCHS = 1000
LOG_EVERY = 100
SPLIT_SEED = 666
# torch.manual_seed(seed), then building that net alone, reproduces the blog's
# published column for it (README, "Parity with PyTorch"). Building both after one seed does not.
BLOG_SEEDS = {"atten": 0, "linear": 0}

StateDict = Mapping[str, Any]  # torch tensors or numpy arrays


class ElementwiseAttention(nn.Module):
    """``relu(softmax(k(x) * q(x) / sqrt(out_dim), dim=1) * v(x))``: a learned feature gate."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.k = nn.Linear(in_dim, out_dim)
        self.q = nn.Linear(in_dim, out_dim)
        self.v = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.k(x), self.q(x), self.v(x)
        # As the blog: sqrt of a 0-dim *float32* tensor, even when the net runs in float64.
        scale = torch.sqrt(torch.tensor(float(v.shape[1]), dtype=torch.float32))
        gate = torch.softmax(k * q / scale, dim=1)
        return torch.relu(gate * v)


class AttentionNet(nn.Module):
    """Attention 4 -> 10, attention 10 -> 20, linear 20 -> 3, sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_1 = ElementwiseAttention(4, 10)
        self.layer_2 = ElementwiseAttention(10, 20)
        self.linear = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(self.layer_2(self.layer_1(x))))


class LinearNet(nn.Module):
    """Linear 4 -> 10, ReLU, linear 10 -> 20, ReLU, linear 20 -> 3, sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_1 = nn.Linear(4, 10)
        self.layer_2 = nn.Linear(10, 20)
        self.layer_3 = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.layer_1(x))
        h = torch.relu(self.layer_2(h))
        return torch.sigmoid(self.layer_3(h))


def build(
    arch: str,
    seed: int | None = None,
    state_dict: StateDict | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A fresh net: torch's init after ``torch.manual_seed(seed)``, or ``state_dict`` loaded.

    The weights are drawn in float32 (as the blog) and then cast to ``dtype``.
    ``state_dict`` values may be tensors or numpy arrays; loading is strict.
    """
    spec = registry.arch_spec(arch)
    if spec.torch_module is None:
        raise ValueError(f"arch {arch!r} has no PyTorch restatement registered")
    if seed is not None:
        torch.manual_seed(seed)
    net = registry.resolve(spec.torch_module)().to(dtype)
    if state_dict is not None:
        tensors = {
            k: v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
            for k, v in state_dict.items()
        }
        net.load_state_dict(tensors, strict=True)
    return net


def blog_order_nets(seed: int) -> dict[str, nn.Module]:
    """Both nets as the blog's script builds them: one ``manual_seed``, atten first, then linear."""
    torch.manual_seed(seed)
    atten = AttentionNet()
    return {"atten": atten, "linear": LinearNet()}


def numpy_state_dict(net: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}


class TorchSplit(NamedTuple):
    """(x float [n, 4], y int64 [n]) per split, as the blog indexes its tensors."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def blog_split_ids(seed: int = SPLIT_SEED, n: int = 150) -> tuple[np.ndarray, ...]:
    """The blog's shuffle and 8:1:1 cut, restated independently of ``jax_iris.data``.

    ``np.random.seed(s); np.random.shuffle(ids)`` is ``RandomState(s).shuffle(ids)``
    without the global side effect; the cuts truncate ``n * 0.8`` and ``n * 0.9``.
    """
    ids = np.arange(n)
    np.random.RandomState(seed).shuffle(ids)
    first, second = int(n * 0.8), int(n * 0.9)
    return ids[:first], ids[first:second], ids[second:]


def load_torch_split(dtype: torch.dtype = torch.float32, seed: int = SPLIT_SEED) -> TorchSplit:
    """Iris as the blog converts it: float32 features (cast to ``dtype``), int64 labels."""
    x_all, y_all = load_iris(return_X_y=True)
    x = torch.tensor(x_all, dtype=torch.float32).to(dtype)
    y = torch.tensor(y_all, dtype=torch.long)
    return TorchSplit(*((x[ids], y[ids]) for ids in blog_split_ids(seed, len(x))))


def loss_and_accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``CrossEntropyLoss`` on the (sigmoid) outputs, and argmax accuracy.

    The accuracy is the blog's ``count / n`` of torch tensors: a float32 value
    (78/120 is 0.64999998, which the blog prints as 0.649 and 0.64).
    """
    loss = nn.functional.cross_entropy(outputs, labels)
    accuracy = ((outputs.argmax(1) == labels).sum() / labels.shape[0]).item()
    return loss, accuracy


class History(NamedTuple):
    loss: np.ndarray  # [epochs], measured before that epoch's update
    accuracy: np.ndarray  # [epochs]


def train(
    net: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    epochs: int = EPOCHS,
    lr: float = LR,
    weight_decay: float = WEIGHT_DECAY,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> History:
    """The blog's full-batch loop, in place on ``net``; ``on_epoch(done, net)`` after each step."""
    x, y = data
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    losses, accuracies = np.zeros(epochs), np.zeros(epochs)
    net.train()
    for epoch in range(epochs):
        loss, accuracy = loss_and_accuracy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses[epoch], accuracies[epoch] = loss.item(), accuracy
        if on_epoch is not None:
            on_epoch(epoch + 1, net)
    return History(losses, accuracies)


def evaluate(net: nn.Module, split: TorchSplit) -> dict[str, dict[str, float]]:
    """Loss and accuracy per split, eval mode, no grad: the blog's final table."""
    net.eval()
    table = {}
    with torch.no_grad():
        for name, (x, y) in zip(TorchSplit._fields, split):
            loss, accuracy = loss_and_accuracy(net(x), y)
            table[name] = {"loss": loss.item(), "accuracy": accuracy}
    return table


class Run(NamedTuple):
    history: History
    state_dict: dict[str, np.ndarray]  # the trained weights
    table: dict[str, dict[str, float]]  # evaluate() after training


def train_from(
    arch: str,
    state_dict: StateDict,
    epochs: int = EPOCHS,
    dtype: torch.dtype = torch.float32,
    split: TorchSplit | None = None,
) -> Run:
    """Train ``arch`` from the given initial weights in ``dtype``; history, weights, table."""
    split = split if split is not None else load_torch_split(dtype)
    net = build(arch, state_dict=state_dict, dtype=dtype)
    history = train(net, split.train, epochs)
    return Run(history, numpy_state_dict(net), evaluate(net, split))


def load_state_dict_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and containers only, no code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_state_dict_file(path: str | os.PathLike, state_dict: StateDict) -> Path:
    """``torch.save`` a state_dict of tensors atomically (never a half-written ``path``)."""
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}
    return atomic_write(path, lambda f: torch.save(tensors, f))


def _format(value: float) -> str:
    return f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jax_iris.pytorch.reference",
        description="Train the blog's two nets in PyTorch and print its tables.",
    )
    blog = registry.blog_archs()
    parser.add_argument("--arch", choices=(*blog, registry.BOTH), default=registry.BOTH)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    for arch in blog:
        parser.add_argument(
            f"--{arch}-seed",
            type=int,
            default=BLOG_SEEDS[arch],
            help=f"torch.manual_seed before building the {arch} net (default: %(default)s)",
        )
    parser.add_argument("--double", action="store_true", help="train in float64")
    args = parser.parse_args(argv)
    # Ops on 120 x 20 tensors are far too small to gain from threads; on a busy
    # machine extra threads only contend (measured: 5-30x slower with 2 threads).
    torch.set_num_threads(1)
    dtype = torch.float64 if args.double else torch.float32
    split = load_torch_split(dtype)

    archs = registry.expand_archs([args.arch])
    tables = {}
    for arch in archs:
        net = build(arch, seed=getattr(args, f"{arch}_seed"), dtype=dtype)
        history = train(net, split.train, args.epochs)
        for epoch in range(LOG_EVERY, args.epochs + 1, LOG_EVERY):
            print(
                f"{arch:>6}  epoch {epoch:>4}/{args.epochs}  train_loss "
                f"{_format(history.loss[epoch - 1])}  train_acc "
                f"{_format(history.accuracy[epoch - 1])}"
            )
        tables[arch] = evaluate(net, split)

    print()
    print(f"{'metric':<9}{'split':<8}" + "".join(f"{registry.label(a):>14}" for a in archs))
    for metric in ("loss", "accuracy"):
        for split_name in TorchSplit._fields:
            cells = "".join(f"{_format(tables[a][split_name][metric]):>14}" for a in archs)
            print(f"{metric:<9}{split_name:<8}{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
