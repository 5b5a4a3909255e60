"""Architectures and output heads, each defined once, by name.

Everything that lists or labels a net (flag choices, table columns, the PyTorch
reference, conversion messages, sweep pairings) reads these registries. Entries
name their implementation as ``"module:attribute"`` strings, resolved only when
used, so this module (and the config and every ``--help``) imports no jax.

Adding a net is one call::

    register_arch("tiny", "Tiny_Model", "my_package.nets:TinyNet")

where ``TinyNet`` is a Flax module taking ``head`` and mapping x [rows, 4] to [rows, 3].

Installed packages add nets and heads for every command through entry points, in the
groups ``jax_iris.archs`` (name = the arch, value = ``module:Class``) and
``jax_iris.heads`` (value = ``module:function``). They are discovered on the first
look at ``ARCHS`` or ``HEADS``, from package metadata only: no plugin code (and so no
jax) runs until a plugin's net is used. A plugin that cannot be used (a name taken or
not an identifier, a value that is not ``module:attribute``, a module that is not
installed) costs one line on stderr naming it and is left out; the other nets,
the built-in ones always, work as before. The table label is the class's ``label``
attribute if it has one, else ``<Name>_Model``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
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
    plugin: str = ""  # "<distribution> (<module:Class>)" for an entry point, else ""


@dataclass(frozen=True)
class HeadSpec:
    name: str
    function: Ref  # outputs = function(last_layer)
    description: str = ""
    plugin: str = ""


ARCH_GROUP = "jax_iris.archs"
HEAD_GROUP = "jax_iris.heads"
BOTH = "both"  # the alias --arch accepts for the blog's pair


class PluginError(ImportError):
    """A plugin's net or head cannot be loaded; the message is one line naming it."""


class _Entries(dict):
    """A registry dict that reads the installed plugins on its first lookup."""

    def __init__(self, group: str) -> None:
        super().__init__()
        self.group = group
        self.discovered = False

    def discover(self) -> None:
        if not self.discovered:
            self.discovered = True
            _discover(self)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return super().__contains__(name)

    def __getitem__(self, name: str) -> Any:
        self.discover()
        return super().__getitem__(name)

    def __iter__(self) -> Iterator[str]:
        self.discover()
        return super().__iter__()

    def __len__(self) -> int:
        self.discover()
        return super().__len__()

    def get(self, name: str, default: Any = None) -> Any:
        self.discover()
        return super().get(name, default)

    def keys(self):  # type: ignore[override]
        self.discover()
        return super().keys()

    def values(self):  # type: ignore[override]
        self.discover()
        return super().values()

    def items(self):  # type: ignore[override]
        self.discover()
        return super().items()


ARCHS: dict[str, ArchSpec] = _Entries(ARCH_GROUP)
HEADS: dict[str, HeadSpec] = _Entries(HEAD_GROUP)


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
        raise ValueError(f"arch {name!r} is already registered{_from(ARCHS, name)}")
    ARCHS[name] = ArchSpec(name, label, module, torch_module, blog, description)
    return ARCHS[name]


def unregister_arch(name: str) -> None:
    ARCHS.pop(name, None)


def register_head(name: str, function: Ref, description: str = "") -> HeadSpec:
    if name in HEADS:
        raise ValueError(f"head {name!r} is already registered{_from(HEADS, name)}")
    HEADS[name] = HeadSpec(name, function, description)
    return HEADS[name]


def _from(entries: dict[str, Any], name: str) -> str:
    entry = dict.get(entries, name)
    plugin = getattr(entry, "plugin", None)
    return f" by the plugin {plugin}" if plugin else ""


def resolve(ref: Ref) -> Any:
    """The object a ``"module:attribute"`` reference names (objects pass through).

    A reference from a plugin that fails to load raises PluginError naming the plugin.
    """
    if not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    plugin = _PLUGIN_REFS.get(ref)
    if plugin is None:
        return getattr(importlib.import_module(module), attribute)
    try:
        return getattr(importlib.import_module(module), attribute)
    except Exception as err:  # the plugin's own code: any failure is the plugin's
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise PluginError(f"the plugin {plugin} cannot be loaded ({reason})") from None


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
    """Table label of an arch; an unregistered name labels itself.

    A plugin's label is its class's ``label`` attribute, or ``<Name>_Model``.
    """
    if name not in ARCHS:
        return name
    spec = ARCHS[name]
    if spec.label:
        return spec.label
    try:
        text = getattr(resolve(spec.module), "label", None)
    except PluginError:
        text = None
    return text if isinstance(text, str) and text else f"{name[:1].upper()}{name[1:]}_Model"


# ------------------------------------------------------------------ plugins

_PLUGIN_REFS: dict[str, str] = {}  # "module:attribute" -> the plugin it came from


def _discover(entries: _Entries) -> None:
    """Register the entry points of ``entries.group``; each unusable one is one line."""
    kind = "arch" if entries.group == ARCH_GROUP else "head"
    try:
        found = metadata.entry_points(group=entries.group)
    except Exception as err:  # a damaged metadata folder elsewhere on sys.path
        _say(f"plugins in {entries.group} not read ({type(err).__name__}: {err})")
        return
    for point in sorted(found, key=lambda p: p.name):
        dist = getattr(point.dist, "name", None) or "an unnamed package"
        plugin = f"{_clean(dist)} ({_clean(point.value)})"
        problem = _problem(entries, kind, point.name, point.value)
        if problem:
            _say(f"{kind} {_clean(point.name)!r} from the plugin {plugin} left out: {problem}")
            continue
        _PLUGIN_REFS[point.value] = plugin
        what = f"from {plugin}"
        if kind == "arch":
            spec = ArchSpec(point.name, "", point.value, description=what, plugin=plugin)
        else:
            spec = HeadSpec(point.name, point.value, description=what, plugin=plugin)
        dict.__setitem__(entries, point.name, spec)


def _problem(entries: _Entries, kind: str, name: str, value: str) -> str:
    """Why an entry point cannot be registered ("" if it can), without running its code."""
    if not name.isidentifier() or name == BOTH:
        return f"the name must be an identifier other than {BOTH!r}"
    if dict.__contains__(entries, name):
        taken = dict.__getitem__(entries, name).plugin
        return f"the name is taken{f' by the plugin {taken}' if taken else ' by jax_iris'}"
    module, sep, attribute = value.partition(":")
    if not sep or not all(part.isidentifier() for part in (*module.split("."), attribute)):
        return f"the value must be module:{'Class' if kind == 'arch' else 'function'}"
    if not _module_exists(module):
        return f"no module named {module!r} is installed"
    return ""


def _module_exists(module: str) -> bool:
    """Whether ``module`` can be found, without importing it or its packages."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if not rest:
        return True
    places = [Path(p) for p in spec.submodule_search_locations or ()]
    for part in rest[:-1]:
        places = [p / part for p in places if (p / part).is_dir()]
    last = rest[-1]
    return any(
        (p / f"{last}.py").is_file()
        or (p / last / "__init__.py").is_file()
        or any(p.glob(f"{last}.*.so"))
        for p in places
    )


def _clean(text: str) -> str:
    from jax_iris.quote import clean

    return clean(str(text), 120)


def _say(message: str) -> None:
    print(f"jax-iris: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _builtin_arch(*args: Any, **kwargs: Any) -> None:
    spec = ArchSpec(*args, **kwargs)
    dict.__setitem__(ARCHS, spec.name, spec)


def _builtin_head(*args: Any) -> None:
    spec = HeadSpec(*args)
    dict.__setitem__(HEADS, spec.name, spec)


_builtin_arch(
    "atten",
    "Atten_Model",
    "jax_iris.models:AttentionNet",
    "jax_iris.pytorch.reference:AttentionNet",
    blog=True,
    description="elementwise attention 4 -> 10 -> 20, dense 20 -> 3",
)
_builtin_arch(
    "linear",
    "Linear_Model",
    "jax_iris.models:LinearNet",
    "jax_iris.pytorch.reference:LinearNet",
    blog=True,
    description="dense 4 -> 10 -> 20 -> 3 with ReLU",
)
_builtin_head("sigmoid", "jax.nn:sigmoid", "sigmoid, then cross-entropy (the blog)")
_builtin_head("logits", "jax_iris.models:identity", "raw logits into cross-entropy")
