"""The sweep as an instrument: one number per net, whatever ran it.

A net's params, history and final table are a function of (arch, head, epochs, seed,
split seed, lr, weight decay) on this platform and nothing else: bit for bit the same
in sweeps of any size, any chunk size, on 1 or 2 host devices, at any position in its
group, in a shard, a resumed run, and alone in ``fit`` and ``train.py``.
"""

from __future__ import annotations

import json
import textwrap

import jax
import numpy as np
import pytest
from helpers import SHORT_EPOCHS, call, leaves, run_python, run_script, xla_cache_env

from jax_iris.config import TrainConfig
from jax_iris.io import checkpoint
from jax_iris.models import flatten_params
from jax_iris.sweep import train_grid
from jax_iris.train import fit

# (seed, lr, weight decay, epochs): the cells followed. lr 0.02 and 1000 epochs are where
# Adam turned one ulp into another outcome before the group shape was held fixed.
CELLS = [(2, 0.02, 0.0, 200), (0, 0.005, 1e-3, 1000), (1, 0.02, 1e-3, 1000)]
LRS, WDS = (0.02, 0.005), (0.0, 1e-3)
# (seed list, chunk size): sizes 1, 3, 8, 17 and 100 per cell, the followed seeds at
# other positions in their group, chunks splitting the grid at other places.
LAYOUTS = [
    ([2], 1000),
    ([1, 2, 0], 1000),
    (list(range(8)), 3),
    (list(range(17)), 7),
    ([5, 0, 9, 1, 2], 2),
    (list(range(100)), 1000),
]

FOLLOW = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from jax_iris.config import TrainConfig
    from jax_iris.sweep import train_grid
    cells, lrs, wds, layouts = json.loads(sys.argv[1])
    SPLITS = ("train", "val", "test")
    found = []
    for epochs in sorted({c[3] for c in cells}):
        for seeds, chunk in layouts:
            if not all(c[0] in seeds for c in cells if c[3] == epochs):
                continue
            g = train_grid(TrainConfig(arch="atten", epochs=epochs), seeds, lrs, wds,
                           params=True, history=True, chunk_size=chunk)
            for seed, lr, wd, e in cells:
                if e != epochs:
                    continue
                i = int(np.flatnonzero((g.seeds == seed) & (g.lr == np.float32(lr))
                                       & (g.weight_decay == np.float32(wd)))[0])
                leaves = [np.asarray(x[i]) for x in jax.tree_util.tree_leaves(g.params)]
                found.append({
                    "cell": [seed, lr, wd, e], "layout": [len(seeds), chunk],
                    "params": [x.tobytes().hex() for x in leaves],
                    "loss": g.history.loss[i].tobytes().hex(),
                    "final": [float(getattr(g.final, s).loss[i]) for s in SPLITS]
                             + [float(getattr(g.final, s).accuracy[i]) for s in SPLITS],
                })
    json.dump({"devices": jax.device_count(), "found": found}, sys.stdout)
    """
)


def _followed(devices: int, tmp_path) -> dict:
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **xla_cache_env()}
    argv = ["-c", FOLLOW, json.dumps([CELLS, LRS, WDS, LAYOUTS])]
    proc = run_python(argv, cwd=tmp_path, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["devices"] == devices
    return result


def _fit_record(seed: int, lr: float, wd: float, epochs: int) -> dict:
    r = fit(TrainConfig(arch="atten", epochs=epochs, lr=lr, weight_decay=wd, seed=seed))
    return {
        "params": [np.asarray(x).tobytes().hex() for x in leaves(r.params)],
        "loss": r.history.loss.tobytes().hex(),
        "final": [getattr(r.final, s).loss for s in ("train", "val", "test")]
        + [getattr(r.final, s).accuracy for s in ("train", "val", "test")],
    }


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_net_is_the_same_bits_in_every_sweep_layout_on_1_and_2_devices_and_in_fit(tmp_path):
    runs = {devices: _followed(devices, tmp_path) for devices in (1, 2)}
    want = {tuple(cell[:3]) + (cell[3],): _fit_record(*cell) for cell in CELLS}
    seen = 0
    for devices, result in runs.items():
        for record in result["found"]:
            cell = tuple(record["cell"])
            expected = want[cell]
            where = (devices, cell, tuple(record["layout"]))
            assert record["params"] == expected["params"], where
            assert record["loss"] == expected["loss"], where
            assert record["final"] == expected["final"], where
            seen += 1
    # every cell in every layout that holds its seed, on both device counts
    per_cell = [sum(c[0] in seeds for seeds, _ in LAYOUTS) for c in CELLS]
    assert seen == 2 * sum(per_cell)
    # the cells really differ: this is not one net compared with itself
    assert len({want[c]["loss"] for c in want}) == len(CELLS)


@pytest.mark.slow
def test_a_second_fit_of_the_same_shapes_compiles_nothing():
    compiled: list[str] = []

    def listener(event: str, _seconds: float, **meta) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(meta.get("fun_name"))

    config = TrainConfig(arch="linear", epochs=SHORT_EPOCHS, log_every=SHORT_EPOCHS)
    fit(config)  # whatever this compiles (or finds in the cache)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        second = fit(
            TrainConfig(arch="linear", epochs=SHORT_EPOCHS, log_every=SHORT_EPOCHS, lr=0.1, seed=7)
        )
        third = fit(config)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled == []
    assert second.compile_seconds == third.compile_seconds == 0.0
    assert not np.array_equal(second.history.loss, third.history.loss)  # lr and seed were used


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_script_gives_the_sweeps_params_and_row(tmp_path):
    """train.py --seed 2 --lr 0.02 --weight-decay 0 writes the params the sweep keeps for that
    net (--keep-params), and its table is that net's CSV row."""
    flags = ["--lr", "0.02", "--weight-decay", "0", "--epochs", "200"]
    proc = run_script("train", "--arch", "atten", "--seed", "2", *flags, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    trained = checkpoint.load(tmp_path / "checkpoints" / "atten.pkl")
    from jax_iris.cli.sweep import main as sweep_main

    argv = ["--arch", "atten", "--seeds", "5", *flags, "--keep-params", "--out", tmp_path / "s"]
    assert sweep_main([str(a) for a in argv]) == 0
    with np.load(tmp_path / "s" / "atten-sigmoid-params.npz", allow_pickle=False) as kept:
        flat = flatten_params(trained.params)
        assert sorted(kept.files) == sorted(flat)
        for name, value in flat.items():
            assert kept[name][2].tobytes() == np.asarray(value).tobytes(), name
    rows = (tmp_path / "s" / "sweep.csv").read_text().splitlines()
    header, row = rows[0].split(","), dict(zip(rows[0].split(","), rows[1 + 2].split(",")))
    assert header[:7] == ["arch", "head", "lr", "weight_decay", "epochs", "seed", "split_seed"]
    assert (row["seed"], row["lr"], row["weight_decay"], row["epochs"]) == (
        "2",
        "0.02",
        "0.0",
        "200",
    )
    for split in ("train", "val", "test"):
        for metric in ("loss", "accuracy"):
            assert np.float32(row[f"{split}_{metric}"]) == np.float32(
                trained.metrics[split][metric]
            )


@pytest.mark.slow
def test_grid_records_float32_values(tmp_path):
    g = train_grid(TrainConfig(arch="linear", epochs=SHORT_EPOCHS), [0], [0.005, 0.0050000001])
    assert len(g.seeds) == 1 and g.lr[0] == np.float32(0.005)  # one float32 value: one cell


@pytest.mark.slow
def test_float32_equal_flag_values_are_one_cell_with_a_note(tmp_path, capsys):
    from jax_iris.cli.sweep import main as sweep_main

    argv = ["--arch", "linear", "--seeds", "2", "--epochs", SHORT_EPOCHS, "--host-devices", 1]
    argv += ["--lr", "0.005", "0.0050000001", "--out", tmp_path / "o"]
    code, out, err = call(sweep_main, argv, capsys)
    assert code == 0, err
    assert "note: some --lr values are one float32 value; they are one cell each: 0.005" in out
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [c["lr"] for c in summary["cells"]] == [0.005]
    assert summary["run"]["group_size"] == 8 and summary["run"]["platform"] == "cpu"
    assert set(summary["run"]["versions"]) >= {"jax", "jaxlib", "flax", "optax", "numpy"}
