"""What decides a run, as frozen dataclasses; importing this module imports no jax.

``TrainConfig`` is one net's run; ``SweepConfig`` is what a sweep adds (how many
seeds, which learning rates and weight decays, how the nets are batched, what is
kept). Command-line flags are derived from the fields (``jax_iris.cli.common``);
each field's metadata holds its help text and, for lists, ``"nargs"``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from jax_iris import registry

MAX_SEED = 2**32 - 1  # numpy's legacy RandomState accepts seeds below 2**32
MAX_EPOCHS = 10_000_000  # a history of 2 float32 per epoch: 80 MB at the bound
MAX_NETS = 1_000_000  # nets in one sweep (seeds x learning rates x weight decays)
MAX_CHUNK = 100_000
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.401298464324817e-45  # the smallest positive float32
# jax_default_matmul_precision values. "highest" is true float32 (what PyTorch computes and
# what the parity tolerances assume); "default" lets a GPU use TF32 (faster, other numbers);
# on CPU all three compute float32.
MATMUL_PRECISIONS = ("highest", "high", "default")


class ConfigError(ValueError):
    """A field holds a value it cannot take; ``field`` names it, the message says why."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name} {problem}")
        self.field = field_name
        self.problem = problem


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides one training run."""

    arch: str = field(default="atten", metadata=_help("network", choices=lambda: registry.ARCHS))
    head: str = field(
        default="sigmoid", metadata=_help("output head", choices=lambda: registry.HEADS)
    )
    epochs: int = field(default=1000, metadata=_help(f"full-batch epochs, 1 to {MAX_EPOCHS:,}"))
    lr: float = field(default=0.005, metadata=_help("Adam learning rate"))
    weight_decay: float = field(
        default=1e-3, metadata=_help("L2 added to the gradient (torch Adam weight_decay)")
    )
    seed: int = field(default=0, metadata=_help("initial-weight seed: jax.random.key(seed)"))
    split_seed: int = field(default=666, metadata=_help("numpy seed of the data split"))
    log_every: int = field(default=100, metadata=_help("epochs between progress lines"))
    matmul_precision: str = field(
        default="highest",
        metadata=_help(
            "float32 matmul precision: highest (true float32, matches the CPU reference),"
            " high or default (TF32 on GPUs: faster, other numbers)",
            choices=lambda: MATMUL_PRECISIONS,
        ),
    )

    def __post_init__(self) -> None:
        check_choice("arch", self.arch, registry.ARCHS)
        check_choice("head", self.head, registry.HEADS)
        check_int("epochs", self.epochs, 1, MAX_EPOCHS)
        check_int("log_every", self.log_every, 1, MAX_EPOCHS)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("split_seed", self.split_seed, 0, MAX_SEED)
        check_rate("lr", self.lr, positive=True)
        check_rate("weight_decay", self.weight_decay, positive=False)
        check_choice("matmul_precision", self.matmul_precision, MATMUL_PRECISIONS)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from ``to_dict``; unknown keys raise ConfigError, and a field
        missing (a checkpoint written before it existed) takes its default."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(values) - names)
        if unknown:
            raise ConfigError("config", f"has unknown fields: {', '.join(unknown)[:200]}")
        return cls(**values)


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: every (lr, weight decay, seed) cell is one net, per arch and head."""

    arch: tuple[str, ...] = field(
        default=("atten", "linear"),
        metadata=_help(f"nets to sweep ({registry.BOTH!r}: the blog's two)", nargs="+"),
    )
    head: tuple[str, ...] = field(
        default=("sigmoid",),
        metadata=_help("output heads", nargs="+", choices=lambda: registry.HEADS),
    )
    seeds: int = field(
        default=1000, metadata=_help(f"nets per cell: seeds 0..N-1, N <= {MAX_NETS:,}")
    )
    lr: tuple[float, ...] = field(
        default=(0.005,), metadata=_help("Adam learning rates", nargs="+")
    )
    weight_decay: tuple[float, ...] = field(
        default=(1e-3,), metadata=_help("weight decays", nargs="+")
    )
    vary_split: bool = field(
        default=False, metadata=_help("net i also gets its own split (seed i)")
    )
    chunk_size: int = field(
        default=1000, metadata=_help(f"nets per compiled call, 1 to {MAX_CHUNK:,}")
    )
    group_size: int = field(
        default=0, metadata=_help("nets trained together per device step (0: measured default)")
    )
    keep_history: bool = field(default=False, metadata=_help("keep every net's per-epoch curve"))
    keep_params: bool = field(default=False, metadata=_help("keep every net's final params"))

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "arch", registry.expand_archs(tuple(self.arch)))
        except ValueError:
            bad = [a for a in self.arch if a != registry.BOTH and a not in registry.ARCHS]
            check_choice("arch", bad[0] if bad else None, registry.ARCHS)
        for name in ("head", "lr", "weight_decay"):
            values = tuple(getattr(self, name))
            if not values:
                raise ConfigError(name, "needs at least one value")
            object.__setattr__(self, name, tuple(dict.fromkeys(values)))
        for head in self.head:
            check_choice("head", head, registry.HEADS)
        for lr in self.lr:
            check_rate("lr", lr, positive=True)
        for wd in self.weight_decay:
            check_rate("weight_decay", wd, positive=False)
        check_int("seeds", self.seeds, 1, MAX_NETS)
        check_int("chunk_size", self.chunk_size, 1, MAX_CHUNK)
        check_int("group_size", self.group_size, 0, MAX_CHUNK)
        if self.nets_per_run > MAX_NETS:
            raise ConfigError(
                "seeds",
                f"x learning rates x weight decays is {self.nets_per_run:,} nets; "
                f"at most {MAX_NETS:,} per arch and head",
            )

    @property
    def nets_per_run(self) -> int:
        """Nets in one (arch, head) grid: seeds x learning rates x weight decays."""
        return self.seeds * len(self.lr) * len(self.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def check_choice(name: str, value: Any, choices: Collection[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {_short(value)}")


def check_int(name: str, value: Any, low: int, high: int) -> None:
    if not is_int(value) or not low <= value <= high:
        raise ConfigError(name, f"must be an integer from {low} to {high:,}, got {_short(value)}")


def check_rate(name: str, value: Any, *, positive: bool) -> None:
    """A value float32 can hold (training runs in float32), > 0 or >= 0."""
    ok = is_real(value) and math.isfinite(value) and abs(value) <= FLOAT32_MAX
    ok = ok and (value >= FLOAT32_TINY if positive else value >= 0)
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(
            name,
            f"must be a number {bound} that float32 can hold (up to 3.4e38), got {_short(value)}",
        )


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _short(value: Any, limit: int = 40) -> str:
    """A value quoted for a message: escaped, cut short, never recursive."""
    from jax_iris.quote import quote

    return quote(value, limit)
