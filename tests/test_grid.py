"""Grid sweeps: every (lr, weight decay, seed) cell is ``fit``, one compile per (arch, head),
statistics that match a hand count, and the command's outputs written all-or-nothing."""

from __future__ import annotations

import csv
import io
import json
import math
import struct
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import assert_one_line_error, call
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
from tensorboardX.record_writer import masked_crc32c

from jax_iris.cli.sweep import main as sweep_main
from jax_iris.io.store import STORE_DIR
from jax_iris.report.progress import Progress
from jax_iris.report.sweep_report import csv_text, summarize_grid
from jax_iris.report.tensorboard import HPARAMS, HPARAMS_METRICS, cell_run_name
from jax_iris.sweep import device_share, train_grid
from jax_iris.train import TrainConfig, fit

EPOCHS = 30
# As in test_sweep: a batched matmul sums in another order than a single one, ~1e-8 a
# step; over EPOCHS steps it stays far below this.
GRID_VS_FIT_ATOL = 1e-6
# Values where float32 stays reproducible for EPOCHS epochs. From lr 0.02 up some nets
# drift past 1e-6 (measured: 2.9e-6 at lr 0.02, 0.11 at lr 0.05 with wd 0), because Adam
# turns a gradient of pure rounding noise into a step of about lr: chaos, not a wrong
# cell. Here the largest difference measured is 2.7e-7.
LRS = (0.002, 0.01)
WDS = (1e-3, 1e-2)
SEEDS = (0, 3)
Z_95 = 1.959963984540054
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("arch", ["atten", "linear"])
@pytest.mark.slow
def test_cell_is_fit_with_its_lr_weight_decay_and_seed(arch):
    config = TrainConfig(arch=arch, epochs=EPOCHS)
    grid = train_grid(config, SEEDS, LRS, WDS, params=True, history=True)
    assert len(grid.seeds) == len(LRS) * len(WDS) * len(SEEDS)
    net = 0
    for lr in LRS:
        for wd in WDS:
            for seed in SEEDS:
                want_cell = (np.float32(lr), np.float32(wd), seed)
                assert (grid.lr[net], grid.weight_decay[net], grid.seeds[net]) == want_cell
                single = fit(
                    TrainConfig(arch=arch, epochs=EPOCHS, lr=lr, weight_decay=wd, seed=seed)
                )
                for a, b in zip(_leaves(single.params), _leaves(grid.params)):
                    np.testing.assert_array_equal(b[net], a)  # bit for bit
                np.testing.assert_array_equal(grid.history.accuracy[net], single.history.accuracy)
                np.testing.assert_array_equal(grid.history.loss[net], single.history.loss)
                for split in ("train", "val", "test"):
                    got = getattr(grid.final, split)
                    want = getattr(single.final, split)
                    assert got.accuracy[net] == np.float32(want.accuracy), (lr, wd, seed, split)
                    assert got.loss[net] == np.float32(want.loss), (lr, wd, seed, split)
                net += 1
    # The cells really differ: the hyperparameters reached the nets.
    assert len({float(grid.final.train.loss[i]) for i in range(net)}) == net


@pytest.mark.slow
def test_a_grid_compiles_once_per_arch_and_head_whatever_its_values():
    """Grids of other values and nearby sizes reuse the compiled group programs.

    57, 117 (chunks of 64 and 53) and 120 (64 and 56) nets: ``device_share`` gives
    their chunks at most two per-device shapes, and each head compiles its three
    programs (init, epochs, final table) once per shape, whatever the values.
    """
    chunk_size, epochs = 64, 3
    devices = jax.device_count()
    grids = [  # (lr, weight decay, seeds)
        ((0.01,), (0.0,), range(57)),
        ((0.001, 0.01, 0.1), (0.0, 1e-3, 1e-1), range(13)),
        ((0.002, 0.02), (1e-4, 1e-2), range(100, 130)),
    ]
    shares = set()
    for lr, wd, s in grids:
        n = len(lr) * len(wd) * len(s)
        for start in range(0, n, chunk_size):
            shares.add(device_share(min(chunk_size, n - start), devices, 8))
    assert len(shares) <= 2
    compiled: list[str] = []

    def listener(event: str, _seconds: float, **meta) -> None:
        if event == COMPILE_EVENT:
            compiled.append(meta.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        per_head = {}
        for head in ("sigmoid", "logits"):
            before = len(compiled)
            for lr, wd, seeds in grids:
                config = TrainConfig(arch="linear", head=head, epochs=epochs)
                result = train_grid(config, seeds, lr, wd, chunk_size=chunk_size)
                assert len(result.seeds) == len(lr) * len(wd) * len(seeds)
            per_head[head] = len(compiled) - before
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert per_head == {"sigmoid": 3 * len(shares), "logits": 3 * len(shares)}, compiled


@pytest.mark.parametrize("group", [1, 8, 1024])
def test_device_shares_are_whole_groups_and_pad_little(group):
    for devices in (1, 2, 8):
        for n in range(1, 3000, 7):
            per = device_share(n, devices, group)
            assert per % group == 0 and per * devices >= n
            groups = per // group
            per_device = -(-n // devices)
            needed = -(-per_device // group)
            assert needed <= groups < needed + needed / 8 + 1, (n, devices, group, per)


@pytest.fixture(scope="module")
def small_grid():
    """Both archs, logits head, 2 lr x 1 wd x 6 seeds, 20 epochs: successes vary by cell."""
    results = {}
    for arch in ("atten", "linear"):
        config = TrainConfig(arch=arch, head="logits", epochs=20)
        results[(arch, "logits")] = train_grid(config, range(6), (0.01, 0.05), (0.0,))
    return results


def _wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    """The roots of (k/n - p)^2 = z^2 p (1 - p) / n, the score test's acceptance bounds."""
    p_hat, z2 = k / n, Z_95**2
    a, b, c = 1 + z2 / n, -(2 * p_hat + z2 / n), p_hat**2
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.slow
def test_small_grid_statistics_match_a_hand_count_from_the_csv(small_grid):
    rows = list(csv.DictReader(io.StringIO(csv_text(small_grid))))
    assert len(rows) == 2 * 2 * 6
    summary = summarize_grid(small_grid)
    assert len(summary.cells) == 4 and len(summary.paired) == 2
    rates = set()
    for cell in summary.cells:
        mine = [
            r
            for r in rows
            if (r["arch"], float(r["lr"]), float(r["weight_decay"]))
            == (cell.arch, cell.lr, cell.weight_decay)
        ]
        assert len(mine) == cell.nets == 6
        successes = sum(round(float(r["train_accuracy"]) * 120) >= 108 for r in mine)
        assert successes == sum(int(r["success"]) for r in mine)
        low, high = _wilson_by_hand(successes, 6)
        s = cell.success
        assert (s.successes, s.n) == (successes, 6)
        assert s.rate == pytest.approx(successes / 6, abs=1e-12)
        assert s.low == pytest.approx(max(low, 0.0), abs=1e-9)
        assert s.high == pytest.approx(min(high, 1.0), abs=1e-9)
        test_mean = sum(float(r["test_accuracy"]) for r in mine) / 6
        t = cell.test_accuracy_mean
        assert t.mean == pytest.approx(test_mean, abs=1e-6)  # the CSV keeps 6 decimals
        assert t.low <= t.mean <= t.high
        rates.add(successes)
    assert len(rates) > 1, "the cells should not all succeed or fail alike"
    for pair in summary.paired:
        by_seed = {}
        for r in rows:
            if (float(r["lr"]), float(r["weight_decay"])) == (pair.lr, pair.weight_decay):
                by_seed.setdefault(int(r["seed"]), {})[r["arch"]] = float(r["test_accuracy"])
        diffs = [v["atten"] - v["linear"] for v in by_seed.values()]
        assert (pair.a, pair.b, pair.n) == ("atten", "linear", 6)
        assert pair.mean_difference == pytest.approx(sum(diffs) / 6, abs=1e-6)
        assert pair.wins == pytest.approx(sum(d > 1e-5 for d in diffs) / 6)
        assert pair.losses == pytest.approx(sum(d < -1e-5 for d in diffs) / 6)
        assert pair.low <= pair.mean_difference <= pair.high


def read_events(path: Path) -> list[Event]:
    """A TFRecord event file: length(8) crc(4) data crc(4) per record, checksums verified."""
    data, events, offset = path.read_bytes(), [], 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[offset + 8 : offset + 12])[0] == masked_crc32c(header)
        body = data[offset + 12 : offset + 12 + length]
        assert struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])[0] == (
            masked_crc32c(body)
        )
        events.append(Event.FromString(body))
        offset += 16 + length
    return events


def hparams_plugin_data(events: list[Event]) -> dict[str, HParamsPluginData]:
    found = {}
    for event in events:
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "hparams":
                found[value.tag] = HParamsPluginData.FromString(value.metadata.plugin_data.content)
    return found


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


GRID_ARGS = ["--arch", "atten", "linear", "--seeds", "3", "--epochs", "20", "--host-devices", "1"]
GRID_ARGS += ["--weight-decay", "0", "1e-3"]
CSV_COLUMNS = [
    "arch",
    "head",
    "lr",
    "weight_decay",
    "epochs",
    "seed",
    "split_seed",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
    "success",
]


@pytest.fixture(scope="module")
def grid_out(tmp_path_factory):
    """One command run: 2 archs x sigmoid x 2 lr x 2 wd x 3 seeds, 20 epochs."""
    out = tmp_path_factory.mktemp("grid") / "out"
    assert sweep_main([*GRID_ARGS, "--lr", "0.01", "0.05", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_command_writes_csv_json_heatmaps_and_hparams(grid_out):
    out = grid_out
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS
    assert len(rows) == 2 * 2 * 2 * 3
    assert {(r["arch"], r["lr"], r["weight_decay"]) for r in rows} == {
        (a, lr, wd)
        for a in ("atten", "linear")
        for lr in ("0.01", "0.05")
        for wd in ("0.0", "0.001")
    }
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["cells"]) == 8 and len(summary["paired"]) == 4
    for cell in summary["cells"]:
        assert {"arch", "head", "lr", "weight_decay", "nets", "success"} <= set(cell)
        assert set(cell["success"]) == {"successes", "n", "rate", "low", "high"}
        assert set(cell["test_accuracy_mean"]) == {"mean", "low", "high"}
        assert cell["nets"] == 3
    for pair in summary["paired"]:
        assert (pair["a"], pair["b"], pair["n"]) == ("atten", "linear", 3)
        assert pair["low"] <= pair["mean_difference"] <= pair["high"]
    assert "by chance" in summary["caveat"]
    for name in ("success.png", "paired_test_accuracy.png"):
        width, height = png_size((out / name).read_bytes())
        assert width >= 450 and height >= 300, (name, width, height)
    assert not (out / "accuracy.png").exists()  # a seed sweep's histogram, not a grid's


@pytest.mark.slow
def test_hparams_runs_read_back_one_per_cell(grid_out):
    out = grid_out
    summary = json.loads((out / "summary.json").read_text())
    board = out / "tensorboard"
    (top,) = [p for p in board.iterdir() if p.is_file()]
    experiment = hparams_plugin_data(read_events(top))["_hparams_/experiment"].experiment
    domains = {
        info.name: [v.string_value or v.number_value for v in info.domain_discrete.values]
        for info in experiment.hparam_infos
    }
    assert domains == {
        "arch": ["atten", "linear"],
        "head": ["sigmoid"],
        "lr": [0.01, 0.05],
        "weight_decay": [0.0, 0.001],
        "epochs": [20.0],
    }
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAMS_METRICS)

    def run_of(cell: dict) -> str:
        return cell_run_name(cell["arch"], cell["head"], cell["lr"], cell["weight_decay"])

    runs = sorted(p.name for p in board.iterdir() if p.is_dir())
    assert runs == sorted(run_of(c) for c in summary["cells"])
    for cell in summary["cells"]:
        (path,) = (board / run_of(cell)).iterdir()
        events = read_events(path)
        plugin = hparams_plugin_data(events)
        assert "_hparams_/experiment" not in plugin  # only the top-level run carries it
        start = plugin["_hparams_/session_start_info"].session_start_info.hparams
        assert set(start) == set(HPARAMS)
        assert start["arch"].string_value == cell["arch"]
        assert start["head"].string_value == cell["head"]
        assert start["lr"].number_value == cell["lr"]
        assert start["weight_decay"].number_value == cell["weight_decay"]
        assert plugin["_hparams_/session_end_info"].session_end_info.status == 1  # success
        scalars = {
            v.tag: (e.step, v.simple_value)
            for e in events
            for v in e.summary.value
            if v.tag in HPARAMS_METRICS
        }
        expected = {
            "cell/success_rate": cell["success"]["rate"],
            "cell/train_accuracy": cell["accuracy"]["train"]["mean"],
            "cell/val_accuracy": cell["accuracy"]["val"]["mean"],
            "cell/test_accuracy": cell["accuracy"]["test"]["mean"],
        }
        assert set(scalars) == set(expected)
        for tag, value in expected.items():
            assert scalars[tag][0] == 20
            assert scalars[tag][1] == pytest.approx(value, rel=1e-6), tag


@pytest.mark.slow
def test_command_progress_names_cells_nets_rate_and_time_left(tmp_path, capsys):
    code, out, err = call(
        sweep_main, [*GRID_ARGS, "--lr", "0.02", "0.05", "--out", tmp_path / "g"], capsys
    )
    assert code == 0, err
    lines = [line for line in out.splitlines() if "4/4 cells" in line]
    assert len(lines) == 2 and all("12/12 nets" in x and "nets/s" in x for x in lines), out
    assert "8 HParams runs" in out  # 2 archs x 4 cells
    # Between chunks a line also says how long is left (lines are rate-limited in a run).
    progress = Progress(12, "atten, sigmoid", "nets", stream=io.StringIO(), extra=lambda d: "")
    assert "about 30 s left" in progress.line(3, 10.0)


@pytest.mark.slow
def test_no_tensorboard_writes_no_runs(tmp_path, capsys):
    out = tmp_path / "g"
    argv = [*GRID_ARGS, "--lr", "0.02", "0.05", "--out", out, "--no-tensorboard"]
    code, _, err = call(sweep_main, argv, capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if p.name != STORE_DIR) == [
        "paired_test_accuracy.png",
        "success.png",
        "summary.json",
        "sweep.csv",
    ]


@pytest.mark.slow
def test_a_failed_write_leaves_every_earlier_file_as_it_was(tmp_path, capsys):
    out = tmp_path / "g"
    code, _, err = call(sweep_main, [*GRID_ARGS, "--lr", "0.01", "0.05", "--out", out], capsys)
    assert code == 0, err
    (out / "success.png").unlink()
    (out / "success.png").mkdir()  # a folder where a figure goes: that write must fail
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # Other values, so a successful run would change every file.
    code, _, err = call(sweep_main, [*GRID_ARGS, "--lr", "0.02", "0.05", "--out", out], capsys)
    assert code == 2
    assert_one_line_error(err, "success.png", "nothing was written")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert (out / "success.png").is_dir()
