"""``jax-iris sweep`` (``scripts/sweep.py``): many seeds (and learning rates, weight decays)
per arch and head, with statistics that say which net really wins.

Outputs, all written together at the end (``fileio.commit``): ``sweep.csv`` (one row
per net) and ``summary.json`` (per cell and paired statistics); for a seed sweep (one
cell) ``accuracy.png``, the final-accuracy histograms; for a grid (several
(lr, weight decay) cells) the heatmaps ``success.png`` and ``paired_test_accuracy.png``
and, unless ``--no-tensorboard``, TensorBoard HParams runs under ``tensorboard/``, one
per cell (``tensorboard --logdir <out>/tensorboard``, HPARAMS tab).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from jax_iris import process_life
from jax_iris.cli.common import (
    Interrupted,
    Parser,
    UsageError,
    add_arch_flag,
    add_config_flags,
    build_config,
    check_writable_dir,
    config_from_args,
    enable_compilation_cache,
    flag_name,
    run_main,
    use_host_devices,
)
from jax_iris.cli.distributed import (
    add_distributed_flags,
    check_distributed_args,
    followers_stop,
    run_distributed,
)
from jax_iris.config import SweepConfig, TrainConfig
from jax_iris.platform import default_host_devices
from jax_iris.quote import clean, clean_path

if TYPE_CHECKING:  # sweep_report imports jax; the command imports it once it has checked flags
    from jax_iris.report.sweep_report import GridSummary

PROG = "sweep.py"
MAX_SHARDS = 100_000
GRID_PNGS = ("success.png", "paired_test_accuracy.png")
HISTORY_SUFFIX = "-history.npy"  # float32 [nets, epochs, 2]: loss, accuracy
PARAMS_SUFFIX = "-params.npz"  # one array per parameter, [nets, ...]
CSV_NAME = "sweep.csv"
JSON_NAME = "summary.json"
PNG_NAME = "accuracy.png"
TENSORBOARD_DIR = "tensorboard"


def parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Train many seeds (x learning rates x weight decays) per arch and head "
        "in one compiled program each, and compare the nets with statistics.",
    )
    add_arch_flag(p, default=SweepConfig.arch)
    add_config_flags(p, SweepConfig, skip=("arch",))
    add_config_flags(
        p, TrainConfig, skip=("arch", "head", "seed", "lr", "weight_decay", "log_every")
    )
    p.add_argument(
        "--out", default="results", help="folder for CSV, JSON and PNG (default: results)"
    )
    p.add_argument(
        "--no-tensorboard",
        action="store_true",
        help=f"for a grid, do not write TensorBoard HParams runs to OUT/{TENSORBOARD_DIR}",
    )
    p.add_argument(
        "--host-devices",
        type=int,
        default=default_host_devices(),
        help="on CPU, run the sweep as this many XLA devices (default: %(default)s, one a core)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="replace another sweep kept in OUT instead of refusing; nothing changes until"
        " the new sweep is complete",
    )
    p.add_argument(
        "--shard",
        metavar="K/N",
        help="train only shard K of N (chunk c belongs to shard c %% N); under a SLURM job"
        " array taken from SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT",
    )
    add_distributed_flags(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        merged = {
            name: (getattr(args, name), list(float32_values(getattr(args, name))))
            for name in ("lr", "weight_decay")
        }
        values = {name: getattr(args, name) for name in SweepConfig.__dataclass_fields__}
        values.update({name: rounded for name, (_, rounded) in merged.items()})
        sweep = build_config(SweepConfig, values)
        # lr and weight decay are lists here (the sweep's); the base config takes the first.
        first = {"lr": sweep.lr[0], "weight_decay": sweep.weight_decay[0]}
        base = config_from_args(
            args, arch=sweep.arch[0], head=sweep.head[0], seed=0, log_every=1, **first
        )
        if not 1 <= args.host_devices <= 1024:
            raise UsageError(f"--host-devices must be from 1 to 1024, got {args.host_devices}")
        shard = parse_shard(args.shard, os.environ)
        out = check_writable_dir(args.out, "--out")
        plan = check_distributed_args(args)
        if plan is not None and shard is not None:
            raise UsageError(
                "--shard and several processes (jax.distributed) do not mix: give each"
                " shard its own single-process job"
            )
        check_targets(planned_outputs(sweep, out, tensorboard=not args.no_tensorboard), out)
        for name, (given, rounded) in merged.items():
            if len(rounded) < len(dict.fromkeys(given)):
                print(
                    f"note: some {flag_name(name)} values are one float32 value; they are one"
                    f" cell each: {' '.join(float32_text(v) for v in rounded)}"
                )
        use_host_devices(args.host_devices)

        def work() -> int:
            enable_compilation_cache()
            return run_sweep(
                sweep,
                base,
                out,
                tensorboard=not args.no_tensorboard,
                fresh=args.fresh,
                shard=shard,
            )

        return run_distributed(PROG, plan, work)

    return run_main(PROG, body)


def float32_values(values: Sequence[float]) -> tuple[float, ...]:
    """Each value as the float32 it trains with, equal ones once (no numpy, no jax)."""
    rounded = []
    for value in values:
        try:
            rounded.append(struct.unpack("<f", struct.pack("<f", value))[0])
        except (OverflowError, struct.error):
            rounded.append(value)  # out of float32's range: the config check says so
    return tuple(dict.fromkeys(rounded))


def float32_text(value: float) -> str:
    """The shortest decimal that is this float32 value."""
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        if float32_values([float(text)])[0] == value:
            return text
    return repr(value)


class Shard(NamedTuple):
    index: int  # K, from 0
    count: int  # N
    source: str  # "--shard" or "SLURM"


def parse_shard(text: str | None, environ: Mapping[str, str]) -> Shard | None:
    """``--shard K/N``, else a SLURM job array's task (``SLURM_ARRAY_TASK_ID`` counted from
    ``SLURM_ARRAY_TASK_MIN`` over ``SLURM_ARRAY_TASK_COUNT``), else None."""
    if text is None:
        if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
            return None
        try:
            task = int(environ["SLURM_ARRAY_TASK_ID"])
            first = int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            count = int(environ["SLURM_ARRAY_TASK_COUNT"])
        except ValueError:
            raise UsageError(
                "SLURM_ARRAY_TASK_ID, _MIN and _COUNT must be integers; give --shard K/N"
            ) from None
        index, source = task - first, "SLURM"
    else:
        k, sep, n = text.partition("/")
        if not sep or not (k.isascii() and k.isdigit() and n.isascii() and n.isdigit()):
            raise UsageError(f"--shard must be K/N, e.g. 0/4, got {clean(text, 40)!r}")
        index, count, source = int(k), int(n), "--shard"
    if not 1 <= count <= MAX_SHARDS or not 0 <= index < count:
        raise UsageError(
            f"{source} must give a shard K from 0 to N-1 of N from 1 to {MAX_SHARDS:,},"
            f" got {index}/{count} (a SLURM array must be consecutive: --array=0-{count - 1})"
        )
    return Shard(index, count, source)


def planned_outputs(sweep: SweepConfig, out: Path, tensorboard: bool) -> list[Path]:
    """Every path the final commit writes, known before training."""
    from jax_iris.report.tensorboard import HPARAMS_EVENTS_NAME, cell_run_name

    cells = len(sweep.lr) * len(sweep.weight_decay)
    paths = [out / CSV_NAME, out / JSON_NAME]
    paths += [out / name for name in (GRID_PNGS if cells > 1 else (PNG_NAME,))]
    for arch in sweep.arch:
        for head in sweep.head:
            if sweep.keep_history:
                paths.append(out / f"{arch}-{head}{HISTORY_SUFFIX}")
            if sweep.keep_params:
                paths.append(out / f"{arch}-{head}{PARAMS_SUFFIX}")
            if tensorboard and cells > 1:
                for lr in sweep.lr:
                    for wd in sweep.weight_decay:
                        run = cell_run_name(arch, head, lr, wd)
                        paths.append(out / TENSORBOARD_DIR / run / HPARAMS_EVENTS_NAME)
    if tensorboard and cells > 1:
        paths.append(out / TENSORBOARD_DIR / HPARAMS_EVENTS_NAME)
    return paths


def manifest_of(sweep: SweepConfig, base: TrainConfig, group: int) -> dict:
    """What decides every number of the sweep (see ``jax_iris.io.store``)."""
    import importlib.metadata

    import jax

    from jax_iris.io.store import FORMAT, VERSION
    from jax_iris.platform import numeric_xla_flags

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    values = sweep.to_dict()
    values["group_size"] = group
    return {
        "format": FORMAT,
        "version": VERSION,
        "sweep": values,
        "train": {
            "epochs": base.epochs,
            "split_seed": base.split_seed,
            "dtype": "float32",
            "matmul_precision": base.matmul_precision,
        },
        "xla_flags": numeric_xla_flags(),
        "platform": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "versions": {
            name: version(name) for name in ("jax-iris", "jax", "jaxlib", "flax", "optax", "numpy")
        },
    }


def run_sweep(
    sweep: SweepConfig,
    base: TrainConfig,
    out: Path,
    tensorboard: bool = True,
    fresh: bool = False,
    shard: Shard | None = None,
) -> int:
    import dataclasses

    import jax
    import numpy as np

    from jax_iris.io.fileio import recover
    from jax_iris.io.store import Store, StoreError
    from jax_iris.models import param_shapes
    from jax_iris.report.progress import Progress
    from jax_iris.sweep import plan_grid, train_chunk
    from jax_iris.train import default_group_size

    group = sweep.group_size or default_group_size()
    manifest = manifest_of(sweep, base, group)
    store = Store(out, manifest)
    leader = jax.process_index() == 0
    if jax.process_count() > 1:
        check_same_sweep(manifest)
    seeds = np.arange(sweep.seeds)
    runs = [(arch, head) for arch in sweep.arch for head in sweep.head]
    plans = {
        (arch, head): plan_grid(
            dataclasses.replace(base, arch=arch, head=head),
            seeds,
            sweep.lr,
            sweep.weight_decay,
            seeds if sweep.vary_split else None,
            chunk_size=sweep.chunk_size,
            group_size=group,
        )
        for arch, head in runs
    }
    shapes = {run: param_shapes(run[0]) if sweep.keep_params else {} for run in runs}
    work = [(run, i) for run in runs for i in range(plans[run].chunks)]
    try:
        if leader:
            recover(out)
            store.check_others(fresh)
            store.open()
        done = _stored_chunks(store, plans, shapes, work) if leader else set()
        if jax.process_count() > 1:
            done = _shared_set(done, work)
    except StoreError as err:
        raise UsageError(str(err)) from None
    mine = [item for k, item in enumerate(work) if shard is None or k % shard.count == shard.index]
    todo = [item for item in mine if item not in done]
    cells = len(sweep.lr) * len(sweep.weight_decay)
    print(
        f"devices: {jax.device_count()} x {jax.devices()[0].platform}, {group} nets a group;"
        f" {len(runs)} (arch, head) x {cells} cells x {sweep.seeds} seeds ="
        f" {len(runs) * sweep.nets_per_run:,} nets in {len(work)} chunks"
    )
    if shard is not None:
        print(f"shard {shard.index}/{shard.count} ({shard.source}): {len(mine)} of the chunks")
    if len(todo) < len(mine):
        print(
            f"resuming: {len(mine) - len(todo)} of {len(mine)} chunks already in"
            f" {clean_path(store.folder)}; training {len(todo)}"
        )
    try:
        for run in runs:
            chunks = [i for r, i in todo if r == run]
            if not chunks:
                continue
            plan = plans[run]
            trained = plan.nets - sum(len(plan.chunk_range(i)) for i in chunks)
            with Progress(
                plan.nets,
                f"{run[0]}, {run[1]}",
                "nets",
                extra=lambda done, k=sweep.seeds, c=cells: f"{done // k}/{c} cells",
            ) as bar:
                start = time.perf_counter()
                for i in chunks:
                    result = train_chunk(
                        plan, i, history=sweep.keep_history, params=sweep.keep_params
                    )
                    if leader:
                        store.write(*run, i, _arrays(result, shapes[run]), shapes[run])
                    trained += len(plan.chunk_range(i))
                    bar.update(trained)
                seconds = time.perf_counter() - start
            nets = sum(len(plan.chunk_range(i)) for i in chunks)
            print(f"{run[0]}, {run[1]}: {nets:,} nets x {base.epochs} epochs in {seconds:.1f} s")
    except StoreError as err:
        raise UsageError(str(err)) from None
    except BaseException as err:
        if not process_life.is_stop(err):
            raise
        kept = sum(store.chunk_path(*run, i).is_file() for run, i in work)  # as on disk
        raise Interrupted(
            f"{kept} of {len(work)} chunks are kept in {clean_path(store.folder)}; run the same"
            " command again to resume"
        ) from None
    if jax.process_count() > 1 and followers_stop(out):
        return 0  # process 0 alone wrote the chunks and writes the outputs
    with store.lock():
        try:
            arrays = {
                item: store.read(
                    *item[0], item[1], len(plans[item[0]].chunk_range(item[1])), shapes[item[0]]
                )
                for item in work
            }
        except StoreError as err:
            raise UsageError(f"{err}; run the same command again to train it anew") from None
        missing = [item for item, value in arrays.items() if value is None]
        if missing:
            print(
                f"{len(work) - len(missing)} of {len(work)} chunks are in"
                f" {clean_path(store.folder)}; the run that finds every chunk there writes the"
                " outputs (or run the command without --shard once the shards are done)"
            )
            return 0
        results = {run: _grid_result(plans[run], arrays, run, shapes[run]) for run in runs}
        try:
            return write_outputs(sweep, manifest, store, results, out, tensorboard, fresh)
        except BaseException as err:
            if not process_life.is_stop(err) or getattr(err, "written", False):
                raise  # not a stop, or one that came once the commit was complete
            raise Interrupted(
                f"no output was written, earlier files are as they were; all {len(work)}"
                f" chunks are kept in {clean_path(store.folder)}; run the same command again"
                " to write the outputs"
            ) from None


def check_same_sweep(manifest: dict) -> None:
    """Across processes: every one must run this sweep; one line naming the flag if not."""
    import jax

    from jax_iris.distributed import allgather_text
    from jax_iris.io.store import canonical, describe_difference, manifest_key

    keys = allgather_text(manifest_key(manifest), 64)
    if len(set(keys)) == 1:
        return
    leader = json.loads(allgather_text(canonical(manifest).decode(), 1 << 20)[0])
    me = jax.process_index()
    differing = [i for i, key in enumerate(keys) if key != keys[0]]
    raise UsageError(
        f"process {me} of {len(keys)}: the processes were given different sweeps"
        + (
            f" (this one differs from process 0 in {describe_difference(manifest, leader)})"
            if me in differing
            else f" (process {differing[0]} differs from process 0)"
        )
        + "; give every process the same flags. Nothing was trained"
    )


def _stored_chunks(store, plans: dict, shapes: dict, work: list) -> set:
    """The chunks already in the store; a damaged one is reported once and trained again."""
    from jax_iris.cli.common import note
    from jax_iris.io.store import StoreError

    done = set()
    for run, i in work:
        try:
            found = store.read(*run, i, len(plans[run].chunk_range(i)), shapes[run])
        except StoreError as err:
            note(f"{err}; training that chunk again")
            continue
        if found is not None:
            done.add((run, i))
    return done


def _shared_set(done: set, work: list) -> set:
    """Process 0's set of stored chunks, on every process."""
    from jax_iris.distributed import allgather_text

    bits = "".join("1" if item in done else "0" for item in work)
    bits = allgather_text(bits, max(len(work), 1))[0]
    return {item for item, bit in zip(work, bits) if bit == "1"}


def _arrays(result, shapes: dict):
    import numpy as np

    from jax_iris.io.store import ChunkArrays
    from jax_iris.models import flatten_params

    final = np.stack(
        [np.stack([np.asarray(m.loss), np.asarray(m.accuracy)], -1) for m in result.final], 1
    )
    history = None
    if result.history is not None:
        history = np.stack(
            [np.asarray(result.history.loss), np.asarray(result.history.accuracy)], -1
        )
    params = flatten_params(result.params) if shapes else None
    return ChunkArrays(final, history, params)


def _grid_result(plan, arrays: dict, run: tuple[str, str], shapes: dict):

    from jax_iris.models import unflatten_params
    from jax_iris.sweep import result_of
    from jax_iris.train import Metrics, SplitMetrics

    chunks = []
    for i in range(plan.chunks):
        a = arrays[(run, i)]
        final = SplitMetrics(*(Metrics(a.final[:, s, 0], a.final[:, s, 1]) for s in range(3)))
        history = None if a.history is None else Metrics(a.history[..., 0], a.history[..., 1])
        params = None if a.params is None else unflatten_params(dict(a.params))
        chunks.append((final, history, params))
    from jax_iris.sweep import ChunkResult

    return result_of(plan, [ChunkResult(*c) for c in chunks])


def previous_outputs(out: Path) -> list[Path]:
    """The files an earlier sweep wrote into ``out``: those its summary lists, and the
    names a sweep writes (for summaries written before they listed their files)."""
    from jax_iris.report.tensorboard import HPARAMS_EVENTS_NAME

    found = [out / name for name in (CSV_NAME, JSON_NAME, PNG_NAME, *GRID_PNGS)]
    found += list(out.glob(f"*{HISTORY_SUFFIX}")) + list(out.glob(f"*{PARAMS_SUFFIX}"))
    found += list((out / TENSORBOARD_DIR).glob(f"*/{HPARAMS_EVENTS_NAME}"))
    found.append(out / TENSORBOARD_DIR / HPARAMS_EVENTS_NAME)
    return [p for p in found if p.is_file() and not p.is_symlink()]


def write_outputs(sweep, manifest, store, results, out, tensorboard, fresh) -> int:
    """Summaries, figures and the kept arrays from the store, all or nothing, in place of
    whatever an earlier sweep left in ``out``."""
    import io
    import shutil

    import jax
    import numpy as np

    from jax_iris.io.fileio import commit
    from jax_iris.models import flatten_params
    from jax_iris.report.sweep_report import csv_text, format_summary, summarize_grid

    for (arch, head), result in results.items():
        n = len(result.seeds)
        diverged = int(np.sum(~np.isfinite(np.asarray(result.final.train.loss))))
        if diverged == n:
            raise UsageError(
                f"{arch}, {head}: every net diverged (non-finite loss); try smaller --lr"
                " values. Nothing was written but the store of trained chunks"
            )
        if diverged:
            print(f"{arch}, {head}: {diverged} of {n} nets diverged (non-finite loss)")
    summary = summarize_grid(results)
    print()
    print(format_summary(summary))
    files = {out / CSV_NAME: csv_text(results).encode()}
    files.update(figures(results, summary, out))
    cells = len(sweep.lr) * len(sweep.weight_decay)
    if tensorboard and cells > 1:
        files.update(hparams_files(summary, out))
    for (arch, head), result in results.items():
        if sweep.keep_history:
            curves = np.stack([result.history.loss, result.history.accuracy], -1)
            files[out / f"{arch}-{head}{HISTORY_SUFFIX}"] = _npy(curves)
        if sweep.keep_params:
            buffer = io.BytesIO()
            # Names are parameter paths ("layer_1/k/kernel"), never savez's allow_pickle.
            np.savez(buffer, **flatten_params(result.params))  # pyright: ignore[reportArgumentType]
            files[out / f"{arch}-{head}{PARAMS_SUFFIX}"] = buffer.getvalue()
    document = {
        **summary.to_dict(),
        "sweep": sweep.to_dict(),
        "run": {
            "store": store.key,
            "group_size": manifest["sweep"]["group_size"],
            "platform": manifest["platform"],
            "device_kind": manifest["device_kind"],
            "devices": jax.device_count(),
            "processes": jax.process_count(),
            "versions": manifest["versions"],
            "matmul_precision": manifest["train"]["matmul_precision"],
            "xla_flags": manifest["xla_flags"],
        },
        "outputs": sorted(str(p.relative_to(out)) for p in [*files, out / JSON_NAME]),
    }
    files[out / JSON_NAME] = (json.dumps(document, indent=2) + "\n").encode()
    check_targets(files, out)
    stale = [p for p in previous_outputs(out) if p not in files]
    try:
        written = commit(files, remove=stale)
    except OSError as err:
        raise UsageError(
            f"cannot write to {clean_path(out)} ({err.strerror or err}); nothing was"
            " written, earlier files are as they were, the trained chunks are kept in"
            f" {clean_path(store.folder)}; choose another --out"
        ) from None
    if fresh:
        for other in store.others():
            shutil.rmtree(other, ignore_errors=True)
    print("\nwrote " + written_summary(written, out))
    return 0


def _npy(array) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, np.float32), allow_pickle=False)
    return buffer.getvalue()


def written_summary(written: list[Path], out: Path) -> str:
    """The files written, with the TensorBoard runs counted rather than listed."""
    board = out / TENSORBOARD_DIR
    runs = [p for p in written if board in p.parents]
    shown = [clean_path(p) for p in written if p not in runs]
    if runs:
        shown.append(f"{clean_path(board)}/ ({len(runs) - 1} HParams runs, one a cell)")
    return ", ".join(shown)


def figures(results: dict, summary: GridSummary, out: Path) -> dict[Path, bytes]:
    """The PNGs: histograms for a seed sweep, heatmaps for a grid; none (with one line)
    when matplotlib is missing."""
    from jax_iris.report.plots import (
        INSTALL_HINT,
        PlotError,
        grid_heatmaps,
        require_matplotlib,
        sweep_histograms,
    )

    try:
        require_matplotlib()
    except PlotError:
        print(f"no figures: {INSTALL_HINT}")
        return {}
    cells = {(c.lr, c.weight_decay) for c in summary.cells}
    if len(cells) == 1:
        return {out / PNG_NAME: sweep_histograms(results)}
    return {out / name: png for name, png in grid_heatmaps(summary).items()}


def hparams_files(summary: GridSummary, out: Path) -> dict[Path, bytes]:
    """One TensorBoard run per cell under ``out/tensorboard``, the experiment at its top.

    The event files have a fixed name, so running the same grid again replaces them.
    """
    from jax_iris.report.tensorboard import HPARAMS_EVENTS_NAME, hparams_events

    root = out / TENSORBOARD_DIR
    return {
        root / run / HPARAMS_EVENTS_NAME: data
        for run, data in hparams_events(summary.cells).items()
    }


def check_targets(files: Iterable[Path], out: Path) -> None:
    """Refuse, before anything is written, a target taken by something not a file.

    A rename onto a folder fails only after the files before it were renamed, so
    it is caught here, while nothing has changed.
    """
    for path in files:
        for place in (path, *path.parents):
            if place == out.parent:
                break
            taken = place.is_dir() if place == path else place.exists() and not place.is_dir()
            if taken or place.is_symlink() and not place.exists():
                raise UsageError(
                    f"cannot write {clean_path(path)}: {clean_path(place)} is in the way"
                    f" (a {'folder' if place.is_dir() else 'file or dangling link'}); nothing"
                    " was written, earlier files are as they were; move it or choose another --out"
                )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
