"""Every command's refusals: exit 2 and one stderr line naming what to fix, before any
work and with nothing written. Each bad input once, in-process: a script only calls its
command's ``main`` (the processes themselves are in test_scripts). What the configs refuse,
value by value, is in test_config; here, that each flag is named when it is refused.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest
from helpers import (
    assert_one_line_error,
    assert_usage_error,
    call,
    run_python,
    save_untrained,
    snapshot,
)

import jax_iris.cli
from jax_iris.cli import convert, evaluate, plot, sweep, train
from jax_iris.report.plots import INSTALL_HINT


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def under_a_file(root: Path) -> Path:
    """A folder path that cannot be created: its parent is a regular file."""
    blocker = root / "blocker"
    blocker.write_text("a regular file, not a folder\n")
    return blocker / "sub"


class Exploit:
    """Pickles as ``fn(*args)``: what a hostile file makes an unrestricted unpickler run."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


# ---------------------------------------------------------------- train


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--arch", "resnet"], ["--arch", "invalid choice: 'resnet'"]),
        (["--head", "tanh"], ["--head", "invalid choice: 'tanh'"]),
        (["--epochs", "ten"], ["--epochs", "invalid int value: 'ten'"]),
        (["--epochs", "-1"], ["--epochs must be an integer from 1 to 10,000,000, got -1"]),
        (["--log-every", "10000001"], ["--log-every must be an integer from 1"]),
        (["--lr", "1e-50"], ["--lr must be a number > 0 that float32 can hold"]),
        (["--weight-decay", "inf"], ["--weight-decay must be a number >= 0"]),
        (["--seed", "99999999999"], ["--seed must be an integer from 0 to 4,294,967,295"]),
        (["--split-seed", "4294967296"], ["--split-seed must be an integer from 0"]),
        (["--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
    ],
)
def test_train_names_the_bad_flag(workdir, capsys, argv, needles):
    outcome = call(train.main, argv, capsys)
    assert_usage_error(outcome, "train.py", *needles)
    assert outcome.out == ""
    assert list(workdir.iterdir()) == []  # no checkpoints/ or runs/ created


def _folder_in_the_way(root: Path) -> list:
    (root / "ck" / "atten.pkl").mkdir(parents=True)
    return ["--checkpoint-dir", root / "ck"]


def _log_subfolder_is_a_file(root: Path) -> list:
    (root / "runs").mkdir()
    (root / "runs" / "atten").write_text("in the way\n")
    return ["--logdir", root / "runs"]


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (
            lambda root: ["--checkpoint-dir", under_a_file(root)],
            ["blocker is not a folder", "choose another --checkpoint-dir"],
        ),
        (
            lambda root: ["--checkpoint-dir", "/proc/jax_iris_tests"],
            ["cannot write to /proc/jax_iris_tests", "choose another --checkpoint-dir"],
        ),
        (
            lambda root: ["--logdir", under_a_file(root)],
            ["blocker is not a folder", "choose another --logdir"],
        ),
        (_log_subfolder_is_a_file, ["runs/atten", "--logdir"]),
        (_folder_in_the_way, ["ck/atten.pkl: it is a folder", "--checkpoint-dir"]),
    ],
    ids=["under-a-file", "proc", "logdir-under-a-file", "log-subfolder-a-file", "ckpt-a-folder"],
)
def test_train_refuses_unwritable_outputs_before_training(workdir, capsys, make, needles):
    argv = make(workdir)
    before, entries = snapshot(workdir), sorted(workdir.rglob("*"))
    outcome = call(train.main, ["--epochs", "5", *argv], capsys)
    assert_usage_error(outcome, "train.py", *needles)
    assert "device" not in outcome.out and "epoch" not in outcome.out  # nothing trained
    assert snapshot(workdir) == before and sorted(workdir.rglob("*")) == entries


# ---------------------------------------------------------------- sweep


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--seeds", "0"], ["--seeds must be an integer from 1 to 1,000,000, got 0"]),
        (
            ["--seeds", "500001", "--lr", "0.1", "0.2"],
            ["--seeds x learning rates x weight decays is 1,000,002 nets"],
        ),
        (["--lr", "0.1", "nan"], ["--lr must be a number > 0", "got nan"]),
        (["--weight-decay", "0", "-0.5"], ["--weight-decay must be a number >= 0"]),
        (["--chunk-size", "0"], ["--chunk-size must be an integer from 1 to 100,000"]),
        (["--group-size", "-1"], ["--group-size must be an integer from 0"]),
        (["--epochs", "0"], ["--epochs must be an integer from 1"]),
        (["--host-devices", "0"], ["--host-devices must be from 1 to 1024, got 0"]),
        (["--arch", "both", "resnet"], ["--arch", "invalid choice: 'resnet'"]),
    ],
)
def test_sweep_names_the_bad_flag(workdir, capsys, argv, needles):
    outcome = call(sweep.main, [*argv, "--out", workdir / "res"], capsys)
    assert_usage_error(outcome, "sweep.py", *needles)
    assert outcome.out == "" and list(workdir.iterdir()) == []


def test_sweep_refuses_an_unwritable_out_before_training(workdir, capsys):
    target = under_a_file(workdir)
    outcome = call(sweep.main, ["--seeds", "2", "--out", target], capsys)
    assert_usage_error(outcome, "sweep.py", "blocker is not a folder", "choose another --out")
    assert outcome.out == ""


# ---------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A valid checkpoint of untrained params."""
    return save_untrained(tmp_path_factory.mktemp("good") / "atten.pkl")


def _truncated(good: Path, folder: Path) -> Path:
    data = good.read_bytes()
    (folder / "cut.pkl").write_bytes(data[: len(data) // 2])
    return folder / "cut.pkl"


def _a_folder(good: Path, folder: Path) -> Path:
    (folder / "folder.pkl").mkdir()
    return folder / "folder.pkl"


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda good, folder: folder / "nope.pkl", ["nope.pkl: no such checkpoint file"]),
        (_a_folder, ["folder.pkl: is a folder"]),
        (_truncated, ["cut.pkl: truncated, corrupt or not a pickle"]),
    ],
    ids=["missing", "folder", "truncated"],
)
def test_evaluate_refuses_what_is_not_a_checkpoint(tmp_path, capsys, good, make, needles):
    outcome = call(evaluate.main, [good, make(good, tmp_path)], capsys)
    assert_usage_error(outcome, "evaluate.py", *needles)
    assert outcome.out == ""  # not even the good file's table


def test_evaluate_runs_nothing_from_a_hostile_file(tmp_path, capsys, good):
    marker = tmp_path / "pwned"
    payload = pickle.loads(good.read_bytes())
    payload["metrics"] = Exploit(os.system, f"touch {marker}")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(payload, protocol=4))
    outcome = call(evaluate.main, [evil], capsys)
    assert_usage_error(outcome, "evaluate.py", "evil.pkl: refused", "system")
    assert not marker.exists()
    pickle.loads(evil.read_bytes())  # control: an unrestricted unpickler does run it
    assert marker.exists()


# ---------------------------------------------------------------- plot


@pytest.mark.slow
def test_plot_leaves_existing_figures_when_a_run_is_missing(tmp_path, capsys, good):
    out_dir = tmp_path / "p"
    assert call(plot.main, [good, "--out", out_dir], capsys).code == 0
    before = snapshot(out_dir)
    missing = tmp_path / "nope.pkl"
    outcome = call(plot.main, [good, missing, "--out", out_dir], capsys)
    assert_usage_error(outcome, "plot.py", str(missing), "no such checkpoint file")
    assert snapshot(out_dir) == before


@pytest.mark.slow
def test_plot_explains_a_checkpoint_without_history(tmp_path, capsys):
    bare = save_untrained(tmp_path / "bare.pkl", "linear", history=False)
    outcome = call(plot.main, [bare, "--out", tmp_path / "p"], capsys)
    assert_usage_error(outcome, "plot.py", str(bare), "no per-epoch history", "train.py")
    assert not (tmp_path / "p").exists()


def test_plot_refuses_an_unwritable_out_before_reading(tmp_path, capsys):
    outcome = call(plot.main, [tmp_path / "nope.pkl", "--out", under_a_file(tmp_path)], capsys)
    assert_usage_error(outcome, "plot.py", "blocker is not a folder", "--out")


def test_plot_without_matplotlib_says_to_install_the_extra(tmp_path, capsys, good, monkeypatch):
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    outcome = call(plot.main, [good, "--out", tmp_path / "p"], capsys)
    assert_usage_error(outcome, "plot.py", INSTALL_HINT)
    assert "pip install 'jax-iris[plot]'" in INSTALL_HINT
    assert outcome.out == "" and not (tmp_path / "p").exists()


# ---------------------------------------------------------------- convert


@pytest.fixture(scope="module")
def pth(tmp_path_factory) -> Path:
    """A genuine torch state_dict file of the attention net."""
    from jax_iris.pytorch import reference

    path = tmp_path_factory.mktemp("pth") / "atten.pth"
    net = reference.build("atten", seed=0)
    return reference.save_state_dict_file(path, reference.numpy_state_dict(net))


def _torch_file(content):
    """A case whose input is ``torch.save(content(reference, torch))``."""

    def make(folder: Path, pth: Path) -> list:
        import torch

        from jax_iris.pytorch import reference

        torch.save(content(reference, torch), folder / "in.pth")
        return [folder / "in.pth", folder / "out.pkl"]

    return make


def _wrong_shape(tr, torch):
    state_dict = tr.build("linear", seed=0).state_dict()
    state_dict["layer_3.weight"] = torch.zeros(4, 20)
    return state_dict


def _cut_pth(folder: Path, pth: Path) -> list:
    data = pth.read_bytes()
    (folder / "cut.pth").write_bytes(data[: len(data) // 2])
    return [folder / "cut.pth", folder / "out.pkl"]


def _not_a_checkpoint(folder: Path, pth: Path) -> list:
    (folder / "x.pkl").write_bytes(pickle.dumps({"hello": 1}))
    return [folder / "x.pkl", folder / "out.pth"]


CONVERT_CASES = {
    "suffixes": (
        lambda folder, pth: [folder / "a.txt", folder / "b.pkl"],
        ["cannot convert", "give a .pth/.pt and a .pkl"],
    ),
    "arch-with-pkl": (
        lambda folder, pth: [folder / "a.pkl", folder / "b.pth", "--arch", "atten"],
        ["--arch applies to a .pth input"],
    ),
    "missing-input": (
        lambda folder, pth: [folder / "nope.pth", folder / "out.pkl"],
        ["nope.pth does not exist"],
    ),
    "input-a-folder": (
        lambda folder, pth: [(folder / "d.pth").mkdir() or folder / "d.pth", folder / "o.pkl"],
        ["d.pth is not a file"],
    ),
    "out-a-folder": (
        lambda folder, pth: [pth, (folder / "d.pkl").mkdir() or folder / "d.pkl"],
        ["d.pkl is a folder; give a file name for OUT"],
    ),
    "out-folder-missing": (
        lambda folder, pth: [pth, folder / "no" / "such" / "out.pkl"],
        ["no/such is not an existing folder"],
    ),
    "cut-pth": (_cut_pth, ["cut.pth: not a readable PyTorch file"]),
    "whole-module-pth": (
        _torch_file(lambda tr, torch: tr.build("atten", seed=0)),
        ["pickles jax_iris.pytorch.reference.AttentionNet, not only tensors", "state_dict first"],
    ),
    "list-pth": (
        _torch_file(lambda tr, torch: [tr.build("atten").state_dict()]),
        ["holds a list, not a state_dict of tensors"],
    ),
    "foreign-keys": (
        _torch_file(lambda tr, torch: {"fc.weight": torch.zeros(2, 2)}),
        ["none of its keys", "fc.weight", "belong to the known nets"],
    ),
    "wrong-shape": (
        _torch_file(_wrong_shape),
        ["does not fit the linear net", "layer_3.weight has shape (4, 20), expected (3, 20)"],
    ),
    "forced-other-arch": (
        lambda folder, pth: [pth, folder / "out.pkl", "--arch", "linear"],
        ["does not fit the linear net", "missing layer_1.weight", "unexpected layer_1.k.weight"],
    ),
    "not-a-checkpoint-pkl": (_not_a_checkpoint, ["x.pkl: not a jax_iris checkpoint"]),
}


@pytest.mark.torch
@pytest.mark.parametrize("case", list(CONVERT_CASES))
def test_convert_refuses_and_writes_nothing(tmp_path, capsys, pth, case):
    make, needles = CONVERT_CASES[case]
    argv = make(tmp_path, pth)
    before = snapshot(tmp_path)
    outcome = call(convert.main, argv, capsys)
    assert_usage_error(outcome, "convert.py", *needles)
    assert outcome.out == ""
    assert snapshot(tmp_path) == before  # no output, no temporary file


@pytest.mark.torch
def test_convert_runs_nothing_from_a_hostile_pth(tmp_path, capsys):
    import torch

    marker, source = tmp_path / "pwned", tmp_path / "evil.pth"
    torch.save({"layer_1.weight": Exploit(os.system, f"touch {marker}")}, source)
    outcome = call(convert.main, [source, tmp_path / "out.pkl"], capsys)
    assert_usage_error(outcome, "convert.py", "evil.pth: refused", "system")
    assert not marker.exists() and not (tmp_path / "out.pkl").exists()
    torch.load(source, weights_only=False)  # control: an unrestricted load does run it
    assert marker.exists()


def test_convert_never_replaces_an_existing_file_without_force(tmp_path, capsys, pth):
    target = tmp_path / "atten.pkl"
    target.write_bytes(b"precious")
    outcome = call(convert.main, [pth, target], capsys)
    assert_usage_error(outcome, "convert.py", f"{target} exists; pass --force to replace it")
    assert target.read_bytes() == b"precious"


# ---------------------------------------------------------------- dispatcher, argparse


@pytest.mark.parametrize(
    ("main", "prog", "argv", "needles"),
    [
        (evaluate.main, "evaluate.py", [], ["the following arguments are required: CHECKPOINT"]),
        (plot.main, "plot.py", [], ["the following arguments are required: RUN"]),
        (convert.main, "convert.py", [], ["the following arguments are required: IN, OUT"]),
        (jax_iris.cli.main, "jax-iris", ["nope"], ["unknown command 'nope'", "train, evaluate"]),
    ],
    ids=[
        "evaluate-nothing",
        "plot-nothing",
        "convert-nothing",
        "unknown-command",
    ],
)
def test_missing_arguments_and_unknown_names(capsys, main, prog, argv, needles):
    assert_usage_error(call(main, argv, capsys), prog, *needles)


def test_jax_iris_without_a_command_prints_the_commands_on_stderr(capsys):
    outcome = call(jax_iris.cli.main, [], capsys)
    assert outcome.code == 2 and outcome.out == ""  # a mistake: usage on stderr, as argparse
    for name in ("train", "evaluate", "sweep", "convert", "plot"):
        assert f"\n  {name} " in outcome.err


# What a user reaches without training answers without importing jax (seconds of start-up):
# each snippet runs in a fresh interpreter and ends by listing the heavy modules loaded.
HEAVY = """
heavy = ("jax", "jaxlib", "flax", "optax", "torch")
print("heavy", sorted(m for m in sys.modules if m.split(".")[0] in heavy))
"""
CONFIG_AND_TRAIN_FLAGS = """
import contextlib, io, sys
from jax_iris.config import ConfigError, SweepConfig, TrainConfig
from jax_iris.cli import train

TrainConfig(arch="linear", lr=0.01)
SweepConfig(arch=("both",), lr=(0.1, 0.2))
try:
    TrainConfig(lr=1e39)
except ConfigError as err:
    print("field", err.field)
for argv in (["--help"], ["--lr", "1e39"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = train.main(argv)
        except SystemExit as exit_:
            code = exit_.code
    print(argv[0], code, "--checkpoint-dir CHECKPOINT_DIR" in out.getvalue())
"""
EVERY_HELP = """
import contextlib, io, sys
from jax_iris.cli import COMMANDS, main
for name in COMMANDS:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([name, "--help"])
    print(name, code, "usage:" in out.getvalue() and "--" in out.getvalue())
"""
PLATFORM = "import sys, jax_iris.platform\n"
COMMAND_NAMES = ("train", "evaluate", "predict", "sweep", "convert", "plot")


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("code", "lines", "err"),
    [
        (
            CONFIG_AND_TRAIN_FLAGS,
            ["field lr", "--help 0 True", "--lr 2 False"],
            "train.py: error: --lr must be a number > 0",
        ),
        (EVERY_HELP, [f"{name} 0 True" for name in COMMAND_NAMES], ""),
        (PLATFORM, [], ""),
    ],
    ids=["config-and-train-flags", "every-help", "platform"],
)
def test_imports_no_jax(tmp_path, code, lines, err):
    proc = run_python(["-c", code + HEAVY], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [*lines, "heavy []"]
    if err:
        assert_one_line_error(proc.stderr, err)
        assert proc.stderr.startswith(err)
    else:
        assert proc.stderr == ""
