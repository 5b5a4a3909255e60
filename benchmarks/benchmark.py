"""``benchmark.py``: JAX against the PyTorch reference, measured in one run on one machine.

    python benchmarks/benchmark.py [--repeats 2] [--skip a b c d]   (a to c need torch)

(a) one net, 1000 epochs: the compiled JAX scan against the blog's PyTorch loop;
(b) N nets x 1000 epochs: the JAX sweep against a PyTorch ensemble (the N nets
    stacked and trained together with batched matmuls) and against the serial
    PyTorch loop (a few seeds timed, scaled per seed); seeds*epochs per second and
    GFLOP/s against a big-matmul peak measured here;
    The strongest PyTorch peer is that ensemble under ``torch.compile`` with a
    hand-written backward, at the best (chunk, processes, threads) of a short search;
(c) ``scripts/train.py --arch atten`` as a whole process against the PyTorch
    reference run as a script, with a warm and a cold compilation cache;
(d) a learning-rate x weight-decay grid against a seed sweep of the same size.

Every figure is the median of ``--repeats`` runs; execution times exclude compiling.
Its sibling modules (``grid_bench``, ``torch_ensemble``) import as top-level modules, as
Python finds them beside a script it runs; the tests see this folder the same way.
"""

from __future__ import annotations

from jax_iris import process_life

process_life.install_for(__name__)  # as a program: before anything heavy is imported

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import jax_iris.models  # noqa: F401  (before any backend: jax_iris's XLA flags, printed below)
from jax_iris import registry
from jax_iris.cli.common import Parser, UsageError, flag_name, run_main, use_host_devices
from jax_iris.config import MAX_EPOCHS, MAX_NETS

ROOT = Path(__file__).resolve().parents[1]
PEAK_MATMUL_SIZE = 2048
WARMUP_EPOCHS = 5  # an untimed run first, on both sides
MAX_REPEATS = 1000
MAX_HOST_DEVICES = 1024
# Part (b) keeps every net's per-epoch metrics on both sides: 400 MB a float32 series here.
MAX_SEED_EPOCHS = 100_000_000
LIMITS = {  # each count runs from 1 to this
    "seeds": MAX_NETS,
    "epochs": MAX_EPOCHS,
    "repeats": MAX_REPEATS,
    "serial_seeds": MAX_NETS,
    "host_devices": MAX_HOST_DEVICES,
}


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_gflops(repeats: int) -> float:
    """float32 GFLOP/s of one big XLA matmul: the machine's compute roof."""
    import jax
    import jax.numpy as jnp

    n = PEAK_MATMUL_SIZE
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    seconds = median_seconds(lambda: jax.block_until_ready(matmul(a)), repeats)
    return 2 * n**3 / seconds / 1e9


def step_flops(arch: str) -> float:
    """FLOPs of one training step of one net (forward, backward, Adam), from XLA's cost model."""
    import functools

    import jax

    from jax_iris.config import TrainConfig
    from jax_iris.data import load_split
    from jax_iris.models import get_model, init_params
    from jax_iris.train import as_batch, hparams_of, init_state, train_step

    hparams = hparams_of(TrainConfig(arch=arch))
    state = init_state(init_params(arch, jax.random.key(0)), hparams)
    step = jax.jit(functools.partial(train_step, model=get_model(arch)))
    cost = step.lower(state, as_batch(load_split().train), hparams).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def jax_single_seconds(arch: str, epochs: int, repeats: int) -> float:
    """One net, ``epochs`` epochs in one compiled scan, per-epoch metrics kept."""
    import jax

    from jax_iris.config import TrainConfig
    from jax_iris.data import load_split
    from jax_iris.train import hparams_of, make_train, split_batches

    config = TrainConfig(arch=arch, epochs=epochs)
    train = jax.jit(make_train(config))
    key, batches, hparams = jax.random.key(0), split_batches(load_split()), hparams_of(config)
    jax.block_until_ready(train(key, batches, hparams))
    return median_seconds(lambda: jax.block_until_ready(train(key, batches, hparams)), repeats)


def torch_single_seconds(arch: str, epochs: int, repeats: int, seeds: int = 1) -> float:
    """The blog's loop in PyTorch (loss and accuracy read back every epoch), ``seeds`` nets."""
    import torch

    from jax_iris.pytorch import reference as tr

    torch.set_num_threads(1)  # fastest for 120 x 20 tensors (see reference.main)
    split = tr.load_torch_split()

    def run(epochs: int = epochs) -> None:
        for seed in range(seeds):
            tr.train(tr.build(arch, seed=seed), split.train, epochs)

    run(WARMUP_EPOCHS)  # torch's first calls pay one-off set-up costs
    return median_seconds(run, repeats)


def jax_sweep_seconds(
    arch: str, seeds: int, epochs: int, repeats: int, group_size: int
) -> tuple[float, float]:
    """(compile seconds, execution seconds) of ``seeds`` nets through ``train_grid``: the
    sweep's group programs (one number per net), per-epoch histories kept, every device
    its share. Compile is the first call less a warm call."""
    from jax_iris.config import TrainConfig
    from jax_iris.sweep import train_grid

    config = TrainConfig(arch=arch, epochs=epochs)

    def run() -> None:
        train_grid(config, np.arange(seeds), history=True, chunk_size=seeds, group_size=group_size)

    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    execution = median_seconds(run, repeats)
    return max(first - execution, 0.0), execution


def previous_sweep_seconds(
    arch: str, seeds: int, epochs: int, repeats: int, group_size: int
) -> tuple[float, float]:
    """The same nets as the sweep ran them before one number per net: the whole run (init,
    epochs, final table) in one program over a ``shard_map`` mesh of every device, groups
    of ``group_size`` (a net's bits then depended on the sweep's size)."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from jax_iris.config import TrainConfig
    from jax_iris.data import load_split
    from jax_iris.train import Hparams, make_train, split_batches

    devices = jax.device_count()
    n = -(-seeds // devices) * devices
    train = make_train(TrainConfig(arch=arch, epochs=epochs))

    def many(keys, batches, hparams):
        return jax.lax.map(
            lambda net: train(net[0], batches, net[1]), (keys, hparams), batch_size=group_size
        )

    mesh = Mesh(np.array(jax.devices()), ("nets",))
    along, shared = NamedSharding(mesh, PartitionSpec("nets")), NamedSharding(mesh, PartitionSpec())
    fn = jax.shard_map(
        many, mesh=mesh, in_specs=(along.spec, shared.spec, along.spec), out_specs=along.spec
    )
    run = jax.jit(fn, in_shardings=(along, shared, along), out_shardings=along)
    keys = jax.device_put(jax.vmap(jax.random.key)(np.arange(n, dtype=np.uint32)), along)
    batches = jax.device_put(split_batches(load_split()), shared)
    hparams = jax.device_put(
        Hparams(np.full(n, 0.005, np.float32), np.full(n, 1e-3, np.float32)), along
    )
    start = time.perf_counter()
    compiled = run.lower(keys, batches, hparams).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(keys, batches, hparams))
    return compile_s, median_seconds(
        lambda: jax.block_until_ready(compiled(keys, batches, hparams)), repeats
    )


def torch_compiled_seconds(
    arch: str, seeds: int, epochs: int, repeats: int, search_epochs: int
) -> tuple[object, dict, float, float]:
    """The strongest PyTorch peer: the ensemble with a hand-written backward and Adam under
    ``torch.compile``, at the fastest (chunk, processes, threads) of a short search.

    Returns (best setting, every setting's search seconds, compile + warm-up seconds,
    execution seconds at full size).
    """
    import torch_ensemble as te

    from jax_iris.pytorch import reference as tr

    x, y = (t.numpy() for t in tr.load_torch_split().train)
    best, searched = te.search_settings(x, y, arch=arch, nets=seeds, epochs=search_epochs)
    compile_s, run_s = te.time_setting(
        x, y, best, arch=arch, nets=seeds, epochs=epochs, repeats=repeats
    )
    return best, searched, compile_s, run_s


def torch_ensemble_seconds(arch: str, seeds: int, epochs: int, repeats: int) -> float:
    """PyTorch's eager form of the sweep: the ensemble's stacks of the reference nets
    (``torch_ensemble``) trained together with ``baddbmm``, autograd and one
    ``torch.optim.Adam`` over the stacks (Adam is elementwise, so this is the same maths as
    separate optimisers), all cores, per-epoch losses kept."""
    import torch
    import torch_ensemble as te

    from jax_iris.pytorch import reference as tr

    torch.set_num_threads(os.cpu_count() or 1)
    x, y = tr.load_torch_split().train
    start = te.init_params(arch, seeds)

    def run(epochs: int = epochs) -> None:
        te.train_eager(arch, [q.clone() for q in start], x, y, epochs)

    run(WARMUP_EPOCHS)
    return median_seconds(run, repeats)


def process_seconds(command: Sequence[str], repeats: int, env: dict[str, str]) -> float:
    def run() -> None:
        subprocess.run(command, cwd=env["BENCH_CWD"], env=env, check=True, capture_output=True)

    return median_seconds(run, repeats)


def _line(label: str, seconds: float, extra: str = "") -> None:
    print(f"  {label:<46} {seconds:9.3f} s{extra}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="benchmark.py", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=list(registry.blog_archs()), default="atten")
    counts = {
        "seeds": (1000, "nets in part (b)"),
        "epochs": (1000, "epochs of every training run"),
        "repeats": (3, "runs per figure, whose median is reported"),
        "serial_seeds": (3, "seeds timed serially in (b)"),
        "host_devices": (os.cpu_count() or 1, "on CPU, the JAX sweep's XLA devices"),
    }
    for name, (default, text) in counts.items():
        parser.add_argument(
            flag_name(name),
            type=int,
            default=default,
            help=f"{text}, 1 to {LIMITS[name]:,} (default: %(default)s)",
        )
    parser.add_argument(
        "--group-size",
        type=int,
        default=0,
        help=f"nets per vmapped step of the JAX sweep, 0 to {MAX_NETS:,}"
        " (default: 0, the library's, 8)",
    )
    parser.add_argument(
        "--search-epochs",
        type=int,
        default=50,
        help="epochs of the short runs that pick the torch.compile setting,"
        f" 1 to {MAX_EPOCHS:,} (default: 50)",
    )
    parser.add_argument(
        "--grid-epochs",
        type=int,
        default=200,
        help=f"epochs of part (d), 1 to {MAX_EPOCHS:,} (default: 200)",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=("a", "b", "c", "d"))
    parser.epilog = f"In (b), seeds x epochs is at most {MAX_SEED_EPOCHS:,}."
    args = parser.parse_args(argv)
    return run_main("benchmark.py", lambda: run(args))


def check_args(args: argparse.Namespace) -> None:
    """Refuse, before anything runs, a count out of range: one line naming its flag."""
    for name, high in LIMITS.items():
        value = getattr(args, name)
        if not 1 <= value <= high:
            raise UsageError(
                f"{flag_name(name)} must be an integer from 1 to {high:,}, got {value}"
            )
    for name, low, high in (
        ("search_epochs", 1, MAX_EPOCHS),
        ("grid_epochs", 1, MAX_EPOCHS),
        ("group_size", 0, MAX_NETS),
    ):
        value = getattr(args, name)
        if not low <= value <= high:
            default = " (0: the library's default)" if low == 0 else ""
            raise UsageError(
                f"{flag_name(name)} must be an integer from {low} to {high:,}{default}, got {value}"
            )
    if "b" not in args.skip and args.seeds * args.epochs > MAX_SEED_EPOCHS:
        raise UsageError(
            f"--seeds x --epochs is {args.seeds * args.epochs:,}; part (b) keeps every"
            f" net's per-epoch metrics, so at most {MAX_SEED_EPOCHS:,} (or --skip b)"
        )


def run(args: argparse.Namespace) -> int:
    check_args(args)
    use_host_devices(args.host_devices)

    # PyTorch first, before XLA starts its thread pools, so neither side slows the other.
    arch, epochs, r, n, k = args.arch, args.epochs, args.repeats, args.seeds, args.serial_seeds
    torch_single = torch_single_seconds(arch, epochs, r) if "a" not in args.skip else None
    if "b" not in args.skip:
        ensemble = torch_ensemble_seconds(arch, n, epochs, max(1, r - 1))
        serial = torch_single_seconds(arch, epochs, 1, seeds=k) * n / k
        best, searched, torch_compile_s, compiled_s = torch_compiled_seconds(
            arch, n, epochs, r, args.search_epochs
        )

    import jax

    print(
        f"jax {jax.__version__} on {jax.device_count()} x {jax.devices()[0].platform}; "
        f"{os.cpu_count()} cores; medians of {r} runs; arch {arch}, {epochs} epochs"
    )
    from jax_iris.platform import numeric_xla_flags

    print(f"  XLA flags: {' '.join(numeric_xla_flags()) or 'none (XLA defaults)'}")
    peak = matmul_peak_gflops(r)
    flops = step_flops(arch)
    print(
        f"  big-matmul peak ({PEAK_MATMUL_SIZE}^2 float32): {peak:.0f} GFLOP/s; "
        f"one training step of one net: {flops / 1e6:.3f} MFLOP (XLA cost model)"
    )

    if "a" not in args.skip:
        print("(a) one net")
        jax_s = jax_single_seconds(arch, epochs, r)
        _line(
            "JAX, compiled scan (execution only)", jax_s, f"  {jax_s / epochs * 1e6:.0f} us/epoch"
        )
        _line(
            "PyTorch reference loop", torch_single, f"  {torch_single / epochs * 1e6:.0f} us/epoch"
        )
        print(f"  speed-up JAX vs PyTorch: {torch_single / jax_s:.1f}x")

    if "b" not in args.skip:
        from jax_iris.train import default_group_size

        group = args.group_size or default_group_size()
        print(f"(b) {n} nets x {epochs} epochs; execution only, compile and warm-up apart")
        work = n * epochs
        jax_compile, jax_s = jax_sweep_seconds(arch, n, epochs, r, group)
        plain_compile, plain_s = previous_sweep_seconds(arch, n, epochs, r, group)
        gflops = flops * work / jax_s / 1e9
        _line(
            f"JAX sweep, groups of {group} ({jax.device_count()} devices)",
            jax_s,
            f"  {work / jax_s:,.0f} net-epochs/s, {gflops:.1f} GFLOP/s"
            f" ({gflops / peak:.1%} of peak); compile {jax_compile:.1f} s",
        )
        _line(
            "JAX sweep as before one number per net (one mesh program)",
            plain_s,
            f"  {work / plain_s:,.0f} net-epochs/s; compile {plain_compile:.1f} s",
        )
        _line(
            f"PyTorch torch.compile ensemble, {best.chunk} nets/chunk,",
            compiled_s,
            f"  {work / compiled_s:,.0f} net-epochs/s; compile + warm-up {torch_compile_s:.1f} s",
        )
        print(f"    {best.processes} process(es) x {best.threads} thread(s): best of the search")
        for setting, seconds in sorted(searched.items(), key=lambda item: item[1]):
            print(
                f"      search ({args.search_epochs} epochs): chunk {setting.chunk:>4},"
                f" {setting.processes} x {setting.threads}: {seconds:.2f} s"
            )
        _line("PyTorch eager ensemble (baddbmm, all cores)", ensemble)
        _line(f"PyTorch serial loop ({k} seeds timed, x{n / k:g})", serial)
        print(
            f"  speed-up of the JAX sweep: {compiled_s / jax_s:.2f}x vs torch.compile (strongest"
            f" PyTorch), {plain_s / jax_s:.2f}x vs the previous JAX path,"
            f" {ensemble / jax_s:.1f}x vs eager ensemble, {serial / jax_s:.1f}x vs serial"
        )

    if "d" not in args.skip:
        from grid_bench import CELLS, format_bench, grid_vs_seed_sweep

        nets, grid_epochs = max(CELLS, n // CELLS * CELLS), args.grid_epochs
        print(f"(d) a grid against a seed sweep of the same size ({nets} nets)")
        print("  " + format_bench(grid_vs_seed_sweep(arch, nets, grid_epochs, repeats=r)))

    if "c" not in args.skip:
        print("(c) whole process: train.py --arch atten vs the PyTorch reference script")
        with tempfile.TemporaryDirectory() as work_dir:
            warm_cache = str(Path(work_dir) / "warm-cache")
            env = {**os.environ, "BENCH_CWD": work_dir, "JAX_IRIS_CACHE_DIR": warm_cache}
            env.pop("XLA_FLAGS", None)
            train = [sys.executable, str(ROOT / "scripts" / "train.py"), "--arch", "atten"]
            reference = [sys.executable, "-m", "jax_iris.pytorch.reference", "--arch", "atten"]
            subprocess.run(train, cwd=work_dir, env=env, check=True, capture_output=True)
            warm = process_seconds(train, r, env)
            cold_runs = []
            for i in range(r):
                cold_env = {**env, "JAX_IRIS_CACHE_DIR": str(Path(work_dir) / f"cold-{i}")}
                cold_runs.append(process_seconds(train, 1, cold_env))
            cold = statistics.median(cold_runs)
            logged = subprocess.run(
                train,
                cwd=work_dir,
                env={**env, "JAX_IRIS_CACHE_DIR": "", "JAX_LOG_COMPILES": "1"},
                capture_output=True,
                text=True,
                check=True,
            )
            programs = [
                line.split(" of ")[1].split(" in ")[0]
                for line in logged.stderr.splitlines()
                if "Finished XLA compilation of " in line
            ]
            torch_s = process_seconds(reference, r, env)
        _line("train.py, warm compilation cache", warm, f"  {warm / torch_s:.2f}x of PyTorch")
        _line("train.py, cold compilation cache", cold, f"  {cold / torch_s:.2f}x of PyTorch")
        _line("PyTorch reference script", torch_s)
        print(f"  programs train.py compiles: {len(programs)} ({', '.join(programs)})")
    return 0


if __name__ == "__main__":
    process_life.exit(main())
