"""The fused per-net program (``jax_iris.fused``) against the autodiff path, sweep-shaped.

Both train ``--nets`` nets (seeds 0..n-1, lr 0.005, weight decay 1e-3, float32) the way a
sweep does: groups of 8 nets vmapped under ``lax.map``, inside ``shard_map`` over the net
axis on 2 host devices; each net's init, training and final train metrics are inside the
program. Compile is excluded; the two programs are timed in turn (A B A B ...) and medians
printed. XLA reads its flags once per process, so each flag setting runs in a child
process of its own, and the parent compares their results.

    python benchmarks/fused_bench.py                    # 1000 nets x 1000 and 200 epochs
    python benchmarks/fused_bench.py --epochs 200 --archs atten
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

DEVICES = 2
GROUP = 8
LR, WEIGHT_DECAY = 0.005, 1e-3
SUCCESS = 0.9  # final train accuracy that counts as a net that learned
FAST_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-reduce --xla_cpu_enable_fast_min_max=true"
SKIP = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast"}


def kernels_per_epoch(hlo: str, epochs: int) -> dict[str, int]:
    """Kernels the compiled epoch loop runs each epoch, by kind, from the compiled HLO text.

    The epoch loop is the ``while`` whose known trip count is ``epochs`` (the first found:
    the full group of 8); everything in its body except parameters, tuples, constants
    and bitcasts is a kernel. YNNPACK fusions are ``kCustom`` fusions marked ``__ynn``.
    """
    import re
    from collections import Counter

    bodies: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
        if head:
            name = head.group(1)
            bodies[name] = []
        elif line.startswith("}"):
            name = None
        elif name and line.strip().startswith(("%", "ROOT")):
            bodies[name].append(line.strip())
    trip = f'"known_trip_count":{{"n":"{epochs}"}}'
    loop = next(
        line for lines in bodies.values() for line in lines if " while(" in line and trip in line
    )
    counts: Counter[str] = Counter()
    for line in bodies[re.search(r"body=%([\w.\-]+)", loop).group(1)]:
        opcode = re.match(r"(?:ROOT )?%\S+ = .*? ([\w\-]+)\(", line).group(1)
        if opcode in SKIP:
            continue
        if opcode == "fusion":
            opcode = "ynn fusion" if "__ynn" in line else re.search(r"kind=(\w+)", line).group(1)
        counts[opcode] += 1
    return dict(counts)


def child(arch: str, epochs: list[int], nets: int, repeats: int, out: str) -> None:
    """Time both programs for each epoch count in this process's XLA flags; save results."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from jax_iris import fused, models, train
    from jax_iris.data import load_split

    batch = train.split_batches(load_split(666)).train
    head = "sigmoid"
    model = models.get_model(arch, head)
    hparams = train.Hparams(jnp.float32(LR), jnp.float32(WEIGHT_DECAY))

    def final_metrics(params: models.Params) -> train.Metrics:
        return train.loss_and_accuracy(model.apply(params, batch.x), batch.y)

    def autodiff(key: jax.Array, num_epochs: int) -> train.Metrics:
        state = train.init_state(models.init_params(arch, key), hparams)
        state, _ = train.run_epochs(state, batch, hparams, num_epochs, model)
        return final_metrics(state.params)

    def fused_net(key: jax.Array, num_epochs: int) -> train.Metrics:
        state = fused.to_state(arch, models.init_params(arch, key))
        state, _ = fused.run_epochs(arch, head, state, batch.x, batch.y, *hparams, num_epochs)
        return final_metrics(fused.to_params(arch, state))

    mesh = Mesh(np.array(jax.devices()[:DEVICES]), ("nets",))
    keys = jax.jit(jax.vmap(jax.random.key))(jnp.arange(nets, dtype=jnp.uint32))
    results = {}
    for num_epochs in epochs:
        programs = {}
        for name, one in (("fused", fused_net), ("autodiff", autodiff)):

            def many(k, one=one, n=num_epochs):
                return jax.lax.map(lambda key: one(key, n), k, batch_size=GROUP)

            fn = jax.jit(jax.shard_map(many, mesh=mesh, in_specs=P("nets"), out_specs=P("nets")))
            start = time.perf_counter()
            compiled = fn.lower(keys).compile()
            programs[name] = (compiled, time.perf_counter() - start)
        times: dict[str, list[float]] = {name: [] for name in programs}
        finals = {}
        for _ in range(repeats):
            for name, (compiled, _) in programs.items():
                start = time.perf_counter()
                finals[name] = jax.block_until_ready(compiled(keys))
                times[name].append(time.perf_counter() - start)
        for name, (compiled, compile_s) in programs.items():
            loss, accuracy = (np.asarray(a, np.float64) for a in finals[name])
            results[f"{name} {num_epochs}"] = {
                "seconds": statistics.median(times[name]),
                "all_seconds": times[name],
                "compile_seconds": compile_s,
                "kernels": kernels_per_epoch(compiled.as_text(), num_epochs),
                "success": float(np.mean(accuracy >= SUCCESS)),
                "loss": loss.tolist(),
                "accuracy": accuracy.tolist(),
            }
    with open(out, "w") as f:
        json.dump(results, f)


def run_child(arch: str, flags: bool, args: argparse.Namespace, out: str) -> dict:
    env = dict(os.environ)
    extra = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES} {extra}" + (
        f" {FAST_FLAGS}" if flags else ""
    )
    # jax_iris sets its default flags on import unless told not to: the "off" child must
    # run with XLA's own defaults.
    env["JAX_IRIS_XLA_FLAGS"] = "" if flags else "none"
    command = [sys.executable, __file__, "--child", arch, "--out", out]
    command += ["--nets", str(args.nets), "--repeats", str(args.repeats), "--epochs"]
    subprocess.run(command + [str(e) for e in args.epochs], env=env, check=True)
    with open(out) as f:
        return json.load(f)


def report(arch: str, runs: dict[bool, dict], epochs: list[int], nets: int) -> None:
    import numpy as np

    print(f"\n{arch}, sigmoid head, {nets} nets, groups of {GROUP}, {DEVICES} host devices")
    print("flags  epochs  program     median s  runs (s)               kernels/epoch  success")
    for flags, results in runs.items():
        for e in epochs:
            for name in ("autodiff", "fused"):
                r = results[f"{name} {e}"]
                runs_s = " ".join(f"{s:.2f}" for s in r["all_seconds"])
                kinds = ", ".join(f"{n} {k}" for k, n in sorted(r["kernels"].items()))
                total = sum(r["kernels"].values())
                print(
                    f"{'on' if flags else 'off':5}  {e:6}  {name:10}  {r['seconds']:8.2f}  "
                    f"{runs_s:22} {total:3} ({kinds})  {r['success']:.3f}"
                )
            speedup = results[f"autodiff {e}"]["seconds"] / results[f"fused {e}"]["seconds"]
            print(f"{'':5}  {e:6}  speed-up    {speedup:8.2f}x")
    baseline = runs[False]
    for e in epochs:
        ref = np.asarray(baseline[f"autodiff {e}"]["loss"])
        for flags, results in runs.items():
            for name in ("autodiff", "fused"):
                loss = np.asarray(results[f"{name} {e}"]["loss"])
                acc = np.asarray(results[f"{name} {e}"]["accuracy"])
                same = np.mean(acc == np.asarray(baseline[f"autodiff {e}"]["accuracy"]))
                print(
                    f"{e} epochs, flags {'on' if flags else 'off'}, {name} vs autodiff without"
                    f" flags: final loss max |diff| {np.max(np.abs(loss - ref)):.2e},"
                    f" same final accuracy {same:.3f} of nets"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", type=int, default=1000)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1000, 200])
    parser.add_argument("--archs", nargs="+", default=["atten", "linear"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-flags-only", action="store_true", help="skip the XLA flag runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.epochs, args.nets, args.repeats, args.out)
        return
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.archs:
            settings = (False,) if args.no_flags_only else (False, True)
            runs = {f: run_child(arch, f, args, f"{folder}/{arch}-{f}.json") for f in settings}
            report(arch, runs, args.epochs, args.nets)


if __name__ == "__main__":
    main()
