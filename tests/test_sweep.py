import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_iris.sweep import train_seeds
from jax_iris.sweep_command import sweep_command
from jax_iris.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 40
# Float32 reassociation (a batched matmul sums in another order than a single one)
# differs by ~1e-8 per step; over EPOCHS steps it stays far below this.
SWEEP_VS_FIT_ATOL = 1e-6


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("arch", ["atten", "linear"])
def test_net_i_of_a_sweep_is_fit_with_seed_i(arch):
    config = TrainConfig(arch=arch, epochs=EPOCHS)
    seeds = [0, 5, 9]
    sweep = train_seeds(config, seeds, params=True, history=True)
    for i, seed in enumerate(seeds):
        single = fit(TrainConfig(arch=arch, epochs=EPOCHS, seed=seed))
        for a, b in zip(_leaves(single.params), _leaves(sweep.params)):
            np.testing.assert_allclose(b[i], a, rtol=0, atol=SWEEP_VS_FIT_ATOL)
        np.testing.assert_array_equal(sweep.history.accuracy[i], single.history.accuracy)
        np.testing.assert_allclose(sweep.history.loss[i], single.history.loss, atol=1e-6)


def test_final_metrics_and_shapes():
    sweep = train_seeds(TrainConfig(arch="linear", epochs=EPOCHS), np.arange(5), history=True)
    assert set(sweep.final) == {"train", "val", "test"}
    for split, n in (("train", 120), ("val", 15), ("test", 15)):
        acc = sweep.final[split]["accuracy"]
        assert acc.shape == (5,)
        np.testing.assert_allclose(acc * n, np.round(acc * n), atol=1e-4)  # k / n
        assert np.all(sweep.final[split]["loss"] > 0.5514)
    assert sweep.history.loss.shape == (5, EPOCHS)
    assert sweep.params is None
    np.testing.assert_array_equal(sweep.split_seeds, [666] * 5)


def test_vary_split_gives_each_net_its_split():
    config = TrainConfig(arch="linear", epochs=EPOCHS)
    sweep = train_seeds(config, [1, 2], split_seeds=[7, 8], history=True)
    for i, (seed, split_seed) in enumerate(((1, 7), (2, 8))):
        single = fit(TrainConfig(arch="linear", epochs=EPOCHS, seed=seed, split_seed=split_seed))
        np.testing.assert_allclose(sweep.history.loss[i], single.history.loss, atol=1e-6)
    shared = train_seeds(config, [1, 2], history=True)
    assert not np.allclose(shared.history.loss[0], sweep.history.loss[0])


def test_chunks_give_the_same_nets():
    config = TrainConfig(arch="atten", epochs=EPOCHS)
    whole = train_seeds(config, np.arange(7), history=True)
    chunked = train_seeds(config, np.arange(7), history=True, chunk_size=3)
    np.testing.assert_allclose(chunked.history.loss, whole.history.loss, atol=1e-6)
    np.testing.assert_array_equal(
        chunked.final["test"]["accuracy"], whole.final["test"]["accuracy"]
    )


@pytest.mark.parametrize(
    ("seeds", "kwargs", "message"),
    [
        ([], {}, "non-empty"),
        ([-1], {}, "from 0"),
        ([1, 2], {"split_seeds": [3]}, "one entry per seed"),
        ([1], {"chunk_size": 0}, "chunk_size must be positive"),
    ],
)
def test_bad_arguments(seeds, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_seeds(TrainConfig(epochs=2), seeds, **kwargs)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from jax_iris.sweep import train_seeds
    from jax_iris.train import TrainConfig
    assert jax.device_count() == 4, jax.devices()
    r = train_seeds(TrainConfig(arch="atten", epochs=30), np.arange(10), history=True)
    json.dump({"devices": jax.device_count(), "loss": r.history.loss.tolist(),
               "test": r.final["test"]["accuracy"].tolist()}, sys.stdout)
    """
)


def test_sharded_over_four_cpu_devices_equals_unsharded():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    sharded = json.loads(proc.stdout)
    assert sharded["devices"] == 4
    local = train_seeds(TrainConfig(arch="atten", epochs=30), np.arange(10), history=True)
    np.testing.assert_allclose(sharded["loss"], local.history.loss, atol=1e-6)
    np.testing.assert_array_equal(sharded["test"], local.final["test"]["accuracy"])


def test_sweep_script_writes_csv_json_png(tmp_path, capsys):
    out = tmp_path / "res"
    code = sweep_command(["--seeds", "6", "--epochs", "30", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "success (train accuracy >= 0.9)" in printed and "paired on the same seeds" in printed
    rows = (out / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("arch,head,seed,split_seed,train_loss,train_accuracy")
    assert len(rows) == 1 + 2 * 6
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["archs"]) == {"atten", "linear"}
    assert summary["archs"]["atten"]["nets"] == 6
    assert summary["paired"]["n"] == 6
    assert 0 <= summary["archs"]["linear"]["success"]["low"] <= 1
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
