"""The convert command: a torch ``.pth`` state_dict to a jax_iris ``.pkl`` checkpoint, or back.

``scripts/convert.py`` only calls ``main``. Both directions read or write a ``.pth``,
so both need torch (the ``torch`` extra), reached only through
``jax_iris.pytorch.reference``; without it the command says which extra to install.
"""

from __future__ import annotations

import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from jax_iris import registry
from jax_iris.cli.common import Parser, UsageError, note, run_main
from jax_iris.pytorch import INSTALL_COMMAND
from jax_iris.quote import quote

PROG = "convert.py"
PTH_ITEM_BYTES = 8  # float64, the widest dtype a state_dict of the nets may hold
PTH_STRUCTURE_BYTES = 1 << 20  # data.pkl, version, byte order: a few hundred bytes in practice
TORCH_SUFFIXES = (".pth", ".pt")
JAX_SUFFIX = ".pkl"
WHOLE_MODULE_HINT = (
    "if it is a whole module saved with torch.save(model), extract its state_dict first "
    "(see the README section on whole-module .pth files)"
)


def parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description=(
            "Convert a PyTorch state_dict (.pth/.pt) of the blog's nets to a jax_iris "
            "checkpoint (.pkl), or a jax_iris checkpoint to a .pth that loads into the "
            "PyTorch nets with load_state_dict(strict=True). The direction follows the "
            "file suffixes."
        ),
    )
    parser.add_argument("input", metavar="IN", help="a .pth/.pt state_dict or a .pkl checkpoint")
    parser.add_argument("output", metavar="OUT", help="the .pkl or .pth/.pt to write")
    parser.add_argument(
        "--arch",
        choices=list(registry.ARCHS),
        help="net of a .pth state_dict (default: inferred from its keys)",
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        source, target = Path(args.input), Path(args.output)
        to_jax = source.suffix in TORCH_SUFFIXES and target.suffix == JAX_SUFFIX
        to_torch = source.suffix == JAX_SUFFIX and target.suffix in TORCH_SUFFIXES
        if not (to_jax or to_torch):
            raise UsageError(
                f"cannot convert {source} to {target}: give a .pth/.pt and a .pkl, "
                "in either order (the suffixes set the direction)"
            )
        if to_torch and args.arch is not None:
            raise UsageError("--arch applies to a .pth input; a .pkl checkpoint names its arch")
        if not source.is_file():
            what = "is not a file" if source.exists() else "does not exist"
            raise UsageError(f"{source} {what}")
        _check_output(target, args.force)
        _pytorch_reference()  # say now, before any work, if torch is missing
        if to_jax:
            return _torch_to_jax(source, target, args.arch)
        return _jax_to_torch(source, target)

    return run_main(PROG, body)


def _check_output(target: Path, force: bool) -> None:
    if target.is_dir():
        raise UsageError(f"{target} is a folder; give a file name for OUT")
    if target.exists() and not force:
        raise UsageError(f"{target} exists; pass --force to replace it")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {target}: {target.parent} is not an existing folder")


def _pytorch_reference() -> ModuleType:
    try:
        from jax_iris.pytorch import reference
    except ImportError as err:
        if err.name == "torch":
            message = f"PyTorch is not installed; install it with: {INSTALL_COMMAND}"
            raise UsageError(message) from None
        raise UsageError(
            f"reading or writing .pth files needs PyTorch, whose import failed ({err});"
            f" reinstall it with: {INSTALL_COMMAND}"
        ) from None
    return reference


def _pth_bound() -> int:
    """The most bytes a ``.pth`` of the known nets may unpack to: every param of the
    largest net in float64, plus room for the pickled structure."""
    from math import prod

    from jax_iris.pytorch import compat

    numel = max(sum(map(prod, compat.torch_shapes(arch).values())) for arch in registry.ARCHS)
    return PTH_ITEM_BYTES * numel + PTH_STRUCTURE_BYTES


def _check_pth_bounds(source: Path) -> None:
    """Refuse, before ``torch.load`` unpacks anything, a file that would unpack to more
    than the known nets hold (a decompression bomb: a small file, gigabytes of tensor)."""
    bound = _pth_bound()
    try:
        is_zip = zipfile.is_zipfile(source)
        if not is_zip:  # the legacy format is not compressed: its size is what it loads
            declared = source.stat().st_size
        else:
            with zipfile.ZipFile(source) as archive:
                declared = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch.load then says what is wrong with it
    if declared > bound:
        raise UsageError(
            f"{source}: refused, it would unpack to {declared:,} bytes, more than the known"
            f" nets hold ({bound:,} bytes at most in float64); it is not a state_dict of them"
        )


def _read_state_dict(source: Path) -> Mapping[str, Any]:
    _check_pth_bounds(source)
    reference = _pytorch_reference()
    try:
        with warnings.catch_warnings():  # torch warns about what it loads (quantized tensors)
            warnings.simplefilter("ignore")
            loaded = reference.load_state_dict_file(source)
    except pickle.UnpicklingError as err:
        # torch.load(weights_only=True) names a pickled class or function it will not run.
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise UsageError(f"{source}: not a readable PyTorch file (torch.load failed)") from None
        raise UsageError(
            f"{source}: refused, it pickles {found.group(1)}, not only tensors; {WHOLE_MODULE_HINT}"
        ) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, ... for a non-torch file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UsageError(
            f"{source}: not a readable PyTorch file ({type(err).__name__}: {first})"
        ) from None
    if not isinstance(loaded, Mapping) or not all(hasattr(v, "detach") for v in loaded.values()):
        raise UsageError(
            f"{source}: holds a {type(loaded).__name__}, not a state_dict of tensors; "
            f"{WHOLE_MODULE_HINT}"
        )
    odd = [key for key in loaded if not isinstance(key, str)]
    if odd:
        raise UsageError(
            f"{source}: key {quote(odd[0], 40)} ({type(odd[0]).__name__}) is not a string;"
            " a state_dict maps parameter names to tensors"
        )
    return loaded


def _closest_arch(source: Path, state_dict: Mapping[str, Any]) -> str:
    """The arch whose keys the state_dict has exactly, else the one sharing most keys."""
    from jax_iris.pytorch.compat import infer_arch, torch_shapes

    arch = infer_arch(state_dict)
    if arch is not None:
        return arch
    archs = list(registry.ARCHS)
    shared = {a: len(set(state_dict) & set(torch_shapes(a))) for a in archs}
    closest = max(archs, key=shared.__getitem__)
    if shared[closest] == 0:
        keys = quote(", ".join(map(str, list(state_dict)[:3])) or "none", 80)
        firsts = " or ".join(f"{next(iter(torch_shapes(a)))} ({a})" for a in archs)
        raise UsageError(
            f"{source}: none of its keys ({keys}{', ...' if len(state_dict) > 3 else ''}) "
            f"belong to the known nets, whose first keys are {firsts}"
        )
    return closest


def _torch_to_jax(source: Path, target: Path, arch: str | None) -> int:
    from jax_iris.config import TrainConfig
    from jax_iris.data import load_split
    from jax_iris.io import checkpoint
    from jax_iris.pytorch.compat import params_from_state_dict
    from jax_iris.report.tables import format_table
    from jax_iris.train import evaluate, metrics_dict

    state_dict = _read_state_dict(source)
    if arch is None:
        arch = _closest_arch(source, state_dict)
    try:
        params = params_from_state_dict(arch, state_dict)
    except ValueError as err:
        raise UsageError(f"{source}: {err}") from None
    params = _as_float32(source, params)

    # A .pth carries only weights: the config records the arch and the blog's defaults.
    config = TrainConfig(arch=arch)
    table = evaluate(config, params, load_split(config.split_seed))
    try:
        checkpoint.save(target, params, config=config, metrics=metrics_dict(table))
    except checkpoint.CheckpointError as err:
        raise UsageError(str(err)) from None
    print(format_table({arch: table}))
    print(f"wrote {target} ({arch} net, from {source})")
    return 0


def _as_float32(source: Path, params: Any) -> Any:
    """float64 params as float32, the dtype jax_iris trains and evaluates in.

    Silent where float32 holds every value exactly; otherwise one line saying how
    much the rounding moved a weight at most. Values beyond float32's range are refused.
    """
    import numpy as np

    from jax_iris.models import flatten_params, unflatten_params

    flat, change = flatten_params(params), 0.0
    for name, value in flat.items():
        if value.dtype != np.float64:
            continue
        with np.errstate(over="ignore"):
            narrow = value.astype(np.float32)
        if np.any(np.isfinite(value) & ~np.isfinite(narrow)):
            raise UsageError(
                f"{source}: {name} holds float64 values beyond float32's range (3.4e38);"
                " jax_iris trains and evaluates in float32"
            )
        finite = np.isfinite(value)
        moved = np.abs(narrow[finite] - value[finite]) / np.maximum(np.abs(value[finite]), 1e-300)
        change = max(change, float(np.max(moved, initial=0.0)))
        flat[name] = narrow
    if change:
        note(
            f"{source}: float64 weights stored as float32, the dtype jax_iris trains and"
            f" evaluates in (rounded: largest relative change {change:.1e})"
        )
    return unflatten_params(flat)


def _jax_to_torch(source: Path, target: Path) -> int:
    from jax_iris.io import checkpoint
    from jax_iris.pytorch.compat import state_dict_from_params

    try:
        ckpt = checkpoint.load(source)
    except checkpoint.CheckpointError as err:
        raise UsageError(str(err)) from None
    if registry.arch_spec(ckpt.arch).torch_module is None:
        raise UsageError(f"{source}: the {ckpt.arch} net has no PyTorch restatement to write")
    state_dict = state_dict_from_params(ckpt.arch, ckpt.params)
    reference = _pytorch_reference()
    # Prove the file will load before writing it.
    reference.build(ckpt.arch, state_dict=state_dict)
    try:
        reference.save_state_dict_file(target, state_dict)
    except OSError as err:
        raise UsageError(f"cannot write {target}: {err.strerror or err}") from None
    print(f"wrote {target} ({ckpt.arch} net state_dict, from {source})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
