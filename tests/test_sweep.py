"""Many nets in one program: net i of a sweep is fit with seed i, chunking and sharding
change nothing; and what the report makes of diverged and unpaired nets.

(Grids of several learning rates and weight decays, their single compile and their
statistics against a hand count are in test_grid.)"""

from __future__ import annotations

import functools
import json
import textwrap

import jax
import numpy as np
import pytest
from helpers import SHORT_EPOCHS, leaves, run_python, xla_cache_env

from jax_iris.config import TrainConfig
from jax_iris.report.sweep_report import format_summary, summarize_grid
from jax_iris.stats import SUCCESS_ACCURACY
from jax_iris.sweep import GridResult, train_grid, train_seeds
from jax_iris.train import SPLITS, Metrics, SplitMetrics, fit

SEEDS = [0, 5, 9, 2]
# Float32 reassociation (a batched matmul sums in another order than a single one)
# differs by ~1e-8 per step; over SHORT_EPOCHS steps it stays far below this.
SWEEP_VS_FIT_ATOL = 1e-6
ROWS = {"train": 120, "val": 15, "test": 15}
SIGMOID_LOSS_FLOOR = 0.5514


def config_of(arch: str = "linear", **changes) -> TrainConfig:
    return TrainConfig(arch=arch, epochs=SHORT_EPOCHS, log_every=SHORT_EPOCHS, **changes)


@functools.cache
def seed_sweep(arch: str) -> GridResult:
    """Nets of SEEDS, params and histories kept: 4 nets in one chunk."""
    return train_seeds(config_of(arch), SEEDS, params=True, history=True)


def assert_same_nets(a: GridResult, b: GridResult, nets: int) -> None:
    """The first ``nets`` nets of two sweeps agree: params, histories, final accuracies."""
    for x, y in zip(leaves(a.params), leaves(b.params)):
        np.testing.assert_allclose(x[:nets], y[:nets], rtol=0, atol=SWEEP_VS_FIT_ATOL)
    np.testing.assert_allclose(
        a.history.loss[:nets], b.history.loss[:nets], rtol=0, atol=SWEEP_VS_FIT_ATOL
    )
    np.testing.assert_array_equal(a.history.accuracy[:nets], b.history.accuracy[:nets])
    for split in SPLITS:
        np.testing.assert_array_equal(
            getattr(a.final, split).accuracy[:nets], getattr(b.final, split).accuracy[:nets]
        )


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["atten", "linear"])
def test_net_i_of_a_sweep_is_fit_with_seed_i(arch):
    sweep = seed_sweep(arch)
    for i, seed in enumerate(SEEDS):
        single = fit(config_of(arch, seed=seed))
        for fitted, swept in zip(leaves(single.params), leaves(sweep.params)):
            np.testing.assert_array_equal(swept[i], fitted)  # bit for bit
        np.testing.assert_array_equal(sweep.history.accuracy[i], single.history.accuracy)
        np.testing.assert_array_equal(sweep.history.loss[i], single.history.loss)
        for split in SPLITS:
            assert getattr(sweep.final, split).accuracy[i] == getattr(single.final, split).accuracy


@pytest.mark.slow
def test_a_sweep_records_every_net():
    sweep = seed_sweep("linear")
    np.testing.assert_array_equal(sweep.seeds, SEEDS)
    np.testing.assert_array_equal(sweep.split_seeds, [666] * 4)
    np.testing.assert_array_equal(sweep.lr, [np.float32(0.005)] * 4)  # as trained
    assert not sweep.vary_split and sweep.config.seed == 0
    assert sweep.history.loss.shape == (4, SHORT_EPOCHS)
    assert all(leaf.shape[0] == 4 for leaf in leaves(sweep.params))
    for split, n in ROWS.items():
        metrics = getattr(sweep.final, split)
        assert metrics.accuracy.shape == metrics.loss.shape == (4,)
        np.testing.assert_allclose(metrics.accuracy * n, np.round(metrics.accuracy * n), atol=1e-4)
        assert np.all(metrics.loss > SIGMOID_LOSS_FLOOR)


@pytest.mark.slow  # a program of its own
def test_chunks_give_the_same_nets():
    """Three nets in chunks of 2 (the second padded with a repeat) against one chunk."""
    chunked = train_seeds(config_of(), SEEDS[:3], params=True, history=True, chunk_size=2)
    assert len(chunked.seeds) == 3
    assert_same_nets(chunked, seed_sweep("linear"), nets=3)


@pytest.mark.slow  # a program of its own
def test_each_net_can_have_its_own_split():
    sweep = train_seeds(config_of(), [1, 2], split_seeds=[7, 8], history=True)
    assert sweep.vary_split
    np.testing.assert_array_equal(sweep.split_seeds, [7, 8])
    for i, (seed, split_seed) in enumerate(((1, 7), (2, 8))):
        single = fit(config_of(seed=seed, split_seed=split_seed))
        np.testing.assert_array_equal(sweep.history.loss[i], single.history.loss)
    on_the_blog_split = fit(config_of(seed=1))
    assert not np.allclose(sweep.history.loss[0], on_the_blog_split.history.loss)


@pytest.mark.parametrize(
    ("seeds", "kwargs", "message"),
    [
        ([], {}, "seeds must be a non-empty list of integers"),
        ([0.5], {}, "non-empty list of integers"),
        ([-1], {}, "from 0 to 4294967295"),
        ([1, 2], {"split_seeds": [3]}, "one entry per seed"),
        ([1], {"chunk_size": 0}, "chunk_size must be positive"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(seeds, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_seeds(config_of(), seeds, **kwargs)


def test_bad_grid_values_are_refused():
    with pytest.raises(ValueError, match="lr must be a non-empty list of finite numbers"):
        train_grid(config_of(), [0], lr=[0.1, float("nan")])
    with pytest.raises(ValueError, match="weight_decay must be a non-empty list"):
        train_grid(config_of(), [0], weight_decay=[])


SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from jax_iris.config import TrainConfig
    from jax_iris.sweep import train_seeds
    assert jax.device_count() == 4, jax.devices()
    r = train_seeds(TrainConfig(arch="atten", epochs=30), np.arange(10), history=True)
    json.dump({"devices": jax.device_count(), "loss": r.history.loss.tolist(),
               "test": r.final.test.accuracy.tolist()}, sys.stdout)
    """
)


@pytest.mark.slow
@pytest.mark.subprocess
def test_sharded_over_four_cpu_devices_equals_unsharded(tmp_path):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", **xla_cache_env()}
    proc = run_python(["-c", SHARDED], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    sharded = json.loads(proc.stdout)
    assert sharded["devices"] == 4
    local = train_seeds(TrainConfig(arch="atten", epochs=30), np.arange(10), history=True)
    np.testing.assert_array_equal(sharded["loss"], local.history.loss)  # bit for bit
    np.testing.assert_array_equal(sharded["test"], local.final.test.accuracy)


# ---------------------------------------------------------------- the report


def grid_of(test_accuracy, train_accuracy=None, seeds=None, lr=0.005, train_loss=None):
    """A GridResult of one cell with the given per-net final values (no training)."""
    test_accuracy = np.asarray(test_accuracy, np.float32)
    n = test_accuracy.size
    train_accuracy = np.full(n, 0.65, np.float32) if train_accuracy is None else train_accuracy
    loss = np.full(n, 0.6, np.float32) if train_loss is None else train_loss
    metrics = Metrics(loss, np.full(n, 0.6, np.float32))
    seeds = np.arange(n) if seeds is None else np.asarray(seeds)
    return GridResult(
        config=config_of(),
        seeds=seeds,
        split_seeds=np.full(n, 666),
        lr=np.full(n, lr),
        weight_decay=np.full(n, 1e-3),
        vary_split=False,
        final=SplitMetrics(
            Metrics(np.asarray(loss, np.float32), np.asarray(train_accuracy, np.float32)),
            metrics,
            Metrics(metrics.loss, test_accuracy),
        ),
        history=None,
        params=None,
    )


def concatenate(first: GridResult, second: GridResult) -> GridResult:
    """Two cells side by side, as train_grid lays them out."""

    def join(a, b):
        return np.concatenate([a, b])

    return first._replace(
        seeds=join(first.seeds, second.seeds),
        split_seeds=join(first.split_seeds, second.split_seeds),
        lr=join(first.lr, second.lr),
        weight_decay=join(first.weight_decay, second.weight_decay),
        final=jax.tree_util.tree_map(join, first.final, second.final),
    )


@pytest.mark.slow
def test_summary_counts_successes_and_pairs_the_same_seeds():
    atten = grid_of([1.0, 0.8, 0.6, 0.6], train_accuracy=[1.0, 0.9, 0.5, 0.5])
    linear = grid_of([0.8, 0.8, 0.8, 0.6], train_loss=[0.6, np.nan, 0.6, 0.6])
    summary = summarize_grid({("atten", "sigmoid"): atten, ("linear", "sigmoid"): linear})
    assert summary.success_threshold == SUCCESS_ACCURACY
    cells = {c.arch: c for c in summary.cells}
    assert cells["atten"].nets == 4 and cells["atten"].split_seed == 666
    assert (cells["atten"].success.successes, cells["atten"].success.n) == (2, 4)
    assert cells["atten"].test_accuracy_mean.mean == pytest.approx(0.75)
    assert cells["atten"].accuracy.test.max == 1.0
    assert (cells["atten"].diverged, cells["linear"].diverged) == (0, 1)
    (paired,) = summary.paired
    assert (paired.a, paired.b, paired.n) == ("atten", "linear", 4)
    assert (paired.wins, paired.ties, paired.losses) == (0.25, 0.5, 0.25)
    assert paired.mean_difference == pytest.approx(0.0, abs=1e-7)
    data = summary.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON data
    assert list(data) == ["success_threshold", "cells", "paired", "caveat"]
    assert list(data["cells"][0]) == [
        *("arch", "head", "lr", "weight_decay", "epochs", "nets", "vary_split", "split_seed"),
        *("accuracy", "success", "test_accuracy_mean", "beats_logistic", "diverged"),
    ]
    assert list(data["cells"][0]["accuracy"]) == list(SPLITS)
    assert data["cells"][0]["accuracy"]["test"] == cells["atten"].accuracy.test._asdict()
    assert list(data["cells"][0]["success"]) == ["successes", "n", "rate", "low", "high"]
    assert data["paired"][0] == {
        **{"head": "sigmoid", "lr": 0.005, "weight_decay": 0.001, "a": "atten", "b": "linear"},
        **{"metric": "test accuracy", "n": 4, "wins": 0.25, "ties": 0.5, "losses": 0.25},
        **{"mean_difference": paired.mean_difference, "low": paired.low, "high": paired.high},
    }

    text = format_summary(summary)
    assert "1 diverged" in text
    assert "atten - linear, head sigmoid, lr 0.005, wd 0.001 (4 pairs): wins 25.0%" in text
    assert "note:" not in text  # one comparison: no multiple-comparison caveat


def test_nets_on_other_seeds_are_not_paired_and_cells_are_kept_apart():
    atten = concatenate(grid_of([1.0, 0.8]), grid_of([0.6, 0.6], lr=0.05))
    linear = concatenate(grid_of([0.8, 0.8]), grid_of([0.6, 0.8], lr=0.05))
    summary = summarize_grid({("atten", "sigmoid"): atten, ("linear", "sigmoid"): linear})
    assert [(c.arch, c.lr, c.nets) for c in summary.cells] == [
        ("atten", 0.005, 2),
        ("atten", 0.05, 2),
        ("linear", 0.005, 2),
        ("linear", 0.05, 2),
    ]
    assert [p.lr for p in summary.paired] == [0.005, 0.05]
    assert "note: each paired interval" in format_summary(summary)

    others = grid_of([0.8, 0.8], seeds=[7, 8])
    unpaired = summarize_grid(
        {("atten", "sigmoid"): grid_of([1.0, 0.8]), ("linear", "sigmoid"): others}
    )
    assert unpaired.paired == ()


def test_the_summary_counts_the_nets_that_beat_logistic_regression():
    """LogisticRegression gets 14/15 on the blog split's test rows: of 1.0, 14/15 (a tie),
    0.8, 1.0 and 13/15, two beat it; the share and its Wilson interval follow."""
    from jax_iris.stats import wilson_interval

    tests = np.array([1.0, 14 / 15, 0.8, 1.0, 13 / 15], np.float32)
    (cell,) = summarize_grid({("linear", "sigmoid"): grid_of(tests)}).cells
    want = wilson_interval(2, 5)
    assert cell.beats_logistic == (0.4, want.low, want.high)
