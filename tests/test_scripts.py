"""The scripts and entry points as a user runs them: real processes, exit codes, what
they print and write. One smoke test each; what the commands refuse is in test_cli."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from helpers import (
    SCRIPTS,
    SHORT_EPOCHS,
    parse_table,
    run_python,
    run_script,
)

from jax_iris.cli import COMMANDS
from jax_iris.io import checkpoint

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``train.py --arch both`` in a fresh folder: (folder, finished process)."""
    cwd = tmp_path_factory.mktemp("run")
    proc = run_script(
        "train", "--arch", "both", "--epochs", SHORT_EPOCHS, "--log-every", SHORT_EPOCHS, cwd=cwd
    )
    return cwd, proc


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_script(trained):
    cwd, proc = trained
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    out = proc.stdout
    assert out.startswith("device: ")
    assert f" atten  epoch {SHORT_EPOCHS}/{SHORT_EPOCHS}  train_loss " in out
    assert "linear  compile " in out and f"for {SHORT_EPOCHS} epochs" in out
    assert "Atten_Model  Linear_Model" in out
    assert len(parse_table(out)) == 6
    for arch in ("atten", "linear"):
        assert f"wrote checkpoints/{arch}.pkl" in out
        ckpt = checkpoint.load(cwd / "checkpoints" / f"{arch}.pkl")
        assert ckpt.arch == arch and ckpt.config.epochs == SHORT_EPOCHS
        assert ckpt.history["loss"].shape == (SHORT_EPOCHS,)
        (events,) = (cwd / "runs" / arch).glob("*/events.out.tfevents.*")  # one run folder
        assert events.stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.subprocess
def test_evaluate_script_reprints_the_table(trained):
    cwd, trained_proc = trained
    proc = run_script("evaluate", "checkpoints/atten.pkl", "checkpoints/linear.pkl", cwd=cwd)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    table = parse_table(proc.stdout)
    assert table == parse_table(trained_proc.stdout)
    for column, arch in enumerate(("atten", "linear")):
        metrics = checkpoint.load(cwd / "checkpoints" / f"{arch}.pkl").metrics
        for (metric, split), values in table.items():
            assert values[column] == pytest.approx(metrics[split][metric], abs=5e-5)


@pytest.mark.slow
@pytest.mark.subprocess
def test_plot_script(trained):
    cwd, _ = trained
    proc = run_script("plot", "checkpoints/atten.pkl", "checkpoints/linear.pkl", cwd=cwd)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout.splitlines() == ["wrote plots/accuracy.png", "wrote plots/loss.png"]
    for name in ("accuracy.png", "loss.png"):
        assert (cwd / "plots" / name).read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.torch
def test_convert_script(trained):
    import torch

    from jax_iris.pytorch.compat import torch_shapes

    cwd, _ = trained
    proc = run_script("convert", "checkpoints/linear.pkl", "linear.pth", cwd=cwd)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout == "wrote linear.pth (linear net state_dict, from checkpoints/linear.pkl)\n"
    state_dict = torch.load(cwd / "linear.pth", weights_only=True)
    assert {k: tuple(v.shape) for k, v in state_dict.items()} == torch_shapes("linear")


# Runs a script as ``python SCRIPT ARGS`` would, with torch unimportable: the None in
# sys.modules is how Python marks a module absent ("import torch" raises ModuleNotFoundError).
WITHOUT_TORCH = """
import runpy, sys
sys.modules["torch"] = None
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(("source", "target"), [("atten.pkl", "atten.pth"), ("in.pth", "out.pkl")])
def test_convert_without_torch_names_the_extra(tmp_path, source, target):
    (tmp_path / source).write_bytes(b"not read: torch is checked first")
    argv = ["-c", WITHOUT_TORCH, SCRIPTS / "convert.py", source, target]
    proc = run_python(argv, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        "convert.py: error: PyTorch is not installed;"
        ' install it with: pip install "jax-iris[torch]"\n'
    )
    assert not (tmp_path / target).exists()


IMPORT_ALL_WITHOUT_TORCH = """
import importlib, pkgutil, sys
sys.modules["torch"] = None
import jax_iris
modules = pkgutil.walk_packages(jax_iris.__path__, "jax_iris.")
names = sorted(m.name for m in modules if not m.name.endswith(".__main__"))  # runs a command
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except ImportError:
        failed.append(name)
print(len(names), failed)
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_only_the_pytorch_reference_needs_torch(tmp_path):
    proc = run_python(["-c", IMPORT_ALL_WITHOUT_TORCH], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    count, failed = proc.stdout.split(" ", 1)
    assert int(count) > 20  # every module was found
    assert failed.strip() == "['jax_iris.pytorch.reference']"


@pytest.mark.slow
@pytest.mark.subprocess
def test_sweep_script(tmp_path):
    argv = ["--arch", "both", "--seeds", "3", "--epochs", SHORT_EPOCHS, "--host-devices", "1"]
    proc = run_script("sweep", *argv, "--out", "res", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert "paired on the same seeds and splits" in proc.stdout
    assert "wrote res/sweep.csv, res/accuracy.png, res/summary.json" in proc.stdout
    rows = (tmp_path / "res" / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("arch,head,lr,weight_decay,epochs,seed,split_seed,train_loss")
    assert len(rows) == 1 + 2 * 3
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert [(c["arch"], c["nets"]) for c in summary["cells"]] == [("atten", 3), ("linear", 3)]
    assert summary["paired"][0]["n"] == 3
    assert summary["sweep"]["seeds"] == 3
    assert (tmp_path / "res" / "accuracy.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.subprocess
def test_python_m_jax_iris(tmp_path):
    proc = run_python(["-m", "jax_iris", "--help"], cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("usage: jax-iris COMMAND")
    for name in COMMANDS:
        assert f"\n  {name} " in proc.stdout


@pytest.mark.slow
@pytest.mark.subprocess
def test_jax_iris_console_script(tmp_path):
    console = Path(sys.executable).parent / "jax-iris"
    assert console.is_file(), "the package is not installed (pip install -e .)"
    proc = run_python([console, "evaluate", "--help"], cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("usage: jax-iris evaluate")
    proc = run_python([console, "evaluate"], cwd=tmp_path)
    assert proc.returncode == 2
    # named as the user typed it
    assert proc.stderr.startswith("jax-iris evaluate: error: the following arguments are required")


def test_scripts_are_thin_wrappers(capsys):
    """One script per command; importing one runs nothing; its main is the command's."""
    scripts = sorted(SCRIPTS.glob("*.py"))
    assert [p.stem for p in scripts] == sorted(COMMANDS)
    for path in scripts:
        namespace = runpy.run_path(str(path))  # not as __main__
        module = sys.modules[f"jax_iris.cli.{path.stem}"]
        assert namespace["main"] is module.main, path.name
    assert capsys.readouterr() == ("", "")
