"""Plugin archs and heads from installed packages (entry points ``jax_iris.archs`` and
``jax_iris.heads``), seen by every command started from a shell.

The plugin is a distribution made in a temporary folder: a package and a ``*.dist-info``
with ``entry_points.txt``, put on the child's ``PYTHONPATH`` as an installed package is
on ``sys.path``. Beside the good net and head it declares broken ones, each of which
must cost one line naming it and never the built-in nets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import SUBPROCESS_TIMEOUT, parse_table

pytestmark = pytest.mark.subprocess

EPOCHS = 5
NETS = '''
import flax.linen as nn

from jax_iris.models import TorchDense, apply_head


class TinyNet(nn.Module):
    """One torch-style dense layer, 4 -> 3: multinomial logistic regression."""

    label = "Tiny_Plugin"
    head: str = "sigmoid"

    @nn.compact
    def __call__(self, x):
        return apply_head(self.head, TorchDense(3, name="layer_1")(x))
'''
ENTRY_POINTS = """
[jax_iris.archs]
tiny = tinyplug.nets:TinyNet
crashy = tinyplug.crashy:Net
ghost = tinyplug.missing:Net
atten = tinyplug.nets:TinyNet
bad-name = tinyplug.nets:TinyNet
novalue = tinyplug.nets

[jax_iris.heads]
tanh = jax.numpy:tanh
"""
BROKEN_AT_DISCOVERY = {  # name -> what its one line says
    "ghost": "no module named 'tinyplug.missing' is installed",
    "atten": "the name is taken by jax_iris",
    "bad-name": "the name must be an identifier",
    "novalue": "the value must be module:Class",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder that holds the plugin as pip would install it."""
    root = tmp_path_factory.mktemp("site")
    package = root / "tinyplug"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(NETS))
    (package / "crashy.py").write_text("raise RuntimeError('this plugin is broken on import')\n")
    info = root / "tinyplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


def jax_iris(site: Path, cwd: Path, *args: object) -> subprocess.CompletedProcess:
    """``jax-iris ARGS`` from a shell, with the plugin installed."""
    command = shutil.which("jax-iris", path=str(Path(sys.executable).parent))
    argv = [command] if command else [sys.executable, "-m", "jax_iris"]
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [*argv, *map(str, args)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


def assert_broken_plugins_reported(stderr: str) -> None:
    """One line per plugin entry left out, each naming it and the distribution."""
    lines = [line for line in stderr.splitlines() if "from the plugin" in line]
    assert len(lines) == len(BROKEN_AT_DISCOVERY), stderr
    for name, why in BROKEN_AT_DISCOVERY.items():
        (line,) = [line for line in lines if f"arch '{name}' from the plugin tinyplug" in line]
        assert line.startswith("jax-iris: ") and why in line, line
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_a_plugin_arch_trains_and_evaluates_from_the_shell(site, tmp_path):
    train = jax_iris(
        site, tmp_path, "train", "--arch", "tiny", "--epochs", EPOCHS, "--log-every", EPOCHS,
        "--lr", 0.05, "--checkpoint-dir", "ck", "--logdir", "runs",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert_broken_plugins_reported(train.stderr)
    assert f"  tiny  epoch {EPOCHS}/{EPOCHS}" in train.stdout
    assert "Tiny_Plugin" in train.stdout  # the label comes from the class
    table = parse_table(train.stdout)
    assert len(table) == 6 and 0 < table["accuracy", "train"][0] <= 1

    evaluate = jax_iris(site, tmp_path, "evaluate", tmp_path / "ck" / "tiny.pkl")
    assert evaluate.returncode == 0, evaluate.stderr
    assert "Tiny_Plugin" in evaluate.stdout
    assert parse_table(evaluate.stdout) == table


@pytest.mark.slow
def test_a_plugin_head_and_the_built_in_nets_work_beside_broken_plugins(site, tmp_path):
    both = jax_iris(
        site, tmp_path, "train", "--arch", "both", "--head", "tanh", "--epochs", EPOCHS,
        "--log-every", EPOCHS, "--checkpoint-dir", "ck", "--no-tensorboard",
    )  # fmt: skip
    assert both.returncode == 0, both.stderr
    assert_broken_plugins_reported(both.stderr)
    assert "Atten_Model  Linear_Model" in both.stdout  # "atten" is still the built-in net


@pytest.mark.slow
def test_a_plugin_that_fails_on_import_is_one_line_when_chosen(site, tmp_path):
    crashy = jax_iris(site, tmp_path, "train", "--arch", "crashy", "--epochs", EPOCHS)
    assert crashy.returncode == 2, crashy.stderr
    (line,) = [line for line in crashy.stderr.splitlines() if "crashy" in line]
    assert line.endswith("train: error: the plugin tinyplug (tinyplug.crashy:Net) cannot be loaded"
                         " (RuntimeError: this plugin is broken on import); nothing was written,"
                         " earlier files are as they were")  # fmt: skip
    assert "RuntimeError: this plugin is broken on import" in line
    assert "nothing was written" in line and "Traceback" not in crashy.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_help_lists_plugins_without_importing_jax(site, tmp_path):
    code = (
        "import sys\n"
        "from jax_iris.cli import main\n"
        "code = main(['train', '--help'])\n"
        "print('exit', code, 'jax' in sys.modules, 'tinyplug.nets' in sys.modules)\n"
    )
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.stdout.splitlines()[-1] == "exit 0 False False", done.stderr
    assert "--arch {atten,linear,crashy,tiny,both}" in done.stdout  # plugins sorted by name
    assert "--head {sigmoid,logits,tanh}" in done.stdout
    assert_broken_plugins_reported(done.stderr)
