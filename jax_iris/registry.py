"""Architectures and output heads, each defined once, by name.

Everything that lists or labels a net (flag choices, table columns, the PyTorch
reference, conversion messages, sweep pairings) reads these registries. Entries
name their implementation as ``"module:attribute"`` strings, resolved only when
used, so this module (and the config and every ``--help``) imports no jax.

Adding a net is one call::

    register_arch("tiny", "Tiny_Model", "my_package.nets:TinyNet")

where ``TinyNet`` is a Flax module taking ``head`` and mapping x [rows, 4] to [rows, 3].
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Ref = str | Callable[..., Any]  # "package.module:attribute", or the object itself


@dataclass(frozen=True)
class ArchSpec:
    name: str
    label: str  # the column header of the evaluation table, as the blog prints it
    module: Ref  # a Flax module class: module(head=...) maps x [rows, 4] -> [rows, 3]
    torch_module: Ref | None = None  # the PyTorch restatement, for parity and conversion
    blog: bool = False  # one of the blog's two nets (what ``--arch both`` means)
    description: str = ""


@dataclass(frozen=True)
class HeadSpec:
    name: str
    function: Ref  # outputs = function(last_layer)
    description: str = ""


ARCHS: dict[str, ArchSpec] = {}
HEADS: dict[str, HeadSpec] = {}
BOTH = "both"  # the alias --arch accepts for the blog's pair


def register_arch(
    name: str,
    label: str,
    module: Ref,
    torch_module: Ref | None = None,
    *,
    blog: bool = False,
    description: str = "",
) -> ArchSpec:
    """Add a net under ``name`` (refused if the name is taken or reserved)."""
    if not name.isidentifier() or name == BOTH:
        raise ValueError(f"an arch name must be an identifier other than {BOTH!r}, got {name!r}")
    if name in ARCHS:
        raise ValueError(f"arch {name!r} is already registered")
    ARCHS[name] = ArchSpec(name, label, module, torch_module, blog, description)
    return ARCHS[name]


def unregister_arch(name: str) -> None:
    ARCHS.pop(name, None)


def register_head(name: str, function: Ref, description: str = "") -> HeadSpec:
    if name in HEADS:
        raise ValueError(f"head {name!r} is already registered")
    HEADS[name] = HeadSpec(name, function, description)
    return HEADS[name]


def resolve(ref: Ref) -> Any:
    """The object a ``"module:attribute"`` reference names (objects pass through)."""
    if not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def arch_spec(name: str) -> ArchSpec:
    if name not in ARCHS:
        raise ValueError(f"unknown arch {name!r}: choose one of {', '.join(ARCHS)}")
    return ARCHS[name]


def head_spec(name: str) -> HeadSpec:
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}: choose one of {', '.join(HEADS)}")
    return HEADS[name]


def blog_archs() -> tuple[str, ...]:
    return tuple(name for name, spec in ARCHS.items() if spec.blog)


def expand_archs(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``--arch`` values in order, ``both`` replaced by the blog's pair, duplicates dropped."""
    out: list[str] = []
    for name in names:
        for arch in blog_archs() if name == BOTH else (name,):
            arch_spec(arch)
            if arch not in out:
                out.append(arch)
    return tuple(out)


def label(name: str) -> str:
    """Table label of an arch; an unregistered name labels itself."""
    return ARCHS[name].label if name in ARCHS else name


register_arch(
    "atten",
    "Atten_Model",
    "jax_iris.models:AttentionNet",
    "jax_iris.torch_reference:AttentionNet",
    blog=True,
    description="elementwise attention 4 -> 10 -> 20, dense 20 -> 3",
)
register_arch(
    "linear",
    "Linear_Model",
    "jax_iris.models:LinearNet",
    "jax_iris.torch_reference:LinearNet",
    blog=True,
    description="dense 4 -> 10 -> 20 -> 3 with ReLU",
)
register_head("sigmoid", "jax.nn:sigmoid", "sigmoid, then cross-entropy (the blog)")
register_head("logits", "jax_iris.models:identity", "raw logits into cross-entropy")
