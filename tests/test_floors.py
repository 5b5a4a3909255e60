"""The declared requirements are the tested ones: pyproject's floors are
``constraints/floors.txt`` (which ``.ci/floors`` installs and tests), the recorded
environment satisfies them, this environment does too, and the blog's table comes out
of ``scripts/train.py`` wherever the suite runs (at the floors in ``.ci/floors``)."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata

import pytest
from helpers import ROOT, parse_table, run_script

FLOORS = ROOT / "constraints" / "floors.txt"
TESTED = ROOT / "constraints" / "tested.txt"
DISTRIBUTED_FLOORS = ROOT / "constraints" / "floors-distributed.txt"
# The blog's table as this project computes it (README). Accuracies are counts of rows
# and agree exactly across the versions tried; the float32 losses pick up one-ulp
# differences that 1000 Adam epochs amplify: at the floors and at the tested versions
# (same code) they differed by up to 2.2e-4 (linear, val and test), so 1e-3.
BLOG_TABLE = {  # (metric, split): (Atten_Model, Linear_Model)
    ("loss", "train"): (0.5605, 0.6700),
    ("loss", "val"): (0.5517, 0.6603),
    ("loss", "test"): (0.6182, 0.6325),
    ("accuracy", "train"): (0.9917, 0.6500),
    ("accuracy", "val"): (1.0000, 0.6667),
    ("accuracy", "test"): (0.9333, 0.8000),
}
LOSS_ACROSS_VERSIONS_ATOL = 1e-3


def version_tuple(text: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> (2, 13, 0): the release numbers, enough to order these pins."""
    release = re.match(r"\d+(\.\d+)*", text)
    assert release, f"not a version: {text!r}"
    return tuple(int(part) for part in release.group().split("."))


def pins(path) -> dict[str, str]:
    """``name==version`` lines of a constraints file, names normalised."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not an exact pin"
            found[normalise(name)] = version
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in project["dependencies"]:
        name, sep, version = requirement.partition(">=")
        assert sep and "," not in version, f"{requirement!r}: expected name>=floor"
        floors[normalise(name)] = version
    return floors


def test_pyproject_declares_the_floors_that_are_tested():
    floors, tested_floors = declared_floors(), pins(FLOORS)
    assert set(tested_floors) == {*floors, "jaxlib"}
    for name, version in floors.items():
        assert version_tuple(tested_floors[name]) == version_tuple(version), name
    assert tested_floors["jaxlib"] == tested_floors["jax"]
    assert floors["jax"] == "0.8.1" and floors["numpy"] == "2.0.0"

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.11"
    assert pyproject["tool"]["ruff"]["target-version"] == "py311"
    assert sys.version_info >= (3, 11)
    assert "jax[cuda12]" in pyproject["project"]["optional-dependencies"]["cuda"]


def test_the_recorded_versions_and_these_satisfy_the_floors():
    floors, tested = pins(FLOORS), pins(TESTED)
    assert "jax-iris" not in tested  # the project itself is not a constraint
    for name, floor in floors.items():
        assert version_tuple(tested[name]) >= version_tuple(floor), (name, tested[name])
        installed = metadata.version(name)
        assert version_tuple(installed) >= version_tuple(floor), (name, installed)


def test_several_processes_need_the_distributed_floor(tmp_path):
    # The floor that .ci/floors tests multi-process sweeps at is the one the command
    # enforces; at this environment's jax the command either refuses (below it: the floor
    # run of the quick tests) or plans the run.
    from jax_iris.cli import sweep as sweep_cli
    from jax_iris.cli.common import UsageError
    from jax_iris.cli.distributed import check_distributed_args
    from jax_iris.distributed import MIN_JAX

    floor = pins(DISTRIBUTED_FLOORS)
    assert set(floor) == {"jax", "jaxlib"}
    assert version_tuple(floor["jax"]) == version_tuple(floor["jaxlib"]) == MIN_JAX
    assert version_tuple(pins(FLOORS)["jax"]) < MIN_JAX  # else one floor file is enough

    args = sweep_cli.parser().parse_args(
        ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "1"]
    )
    installed = min(version_tuple(metadata.version(n)) for n in ("jax", "jaxlib"))
    if installed < MIN_JAX:
        with pytest.raises(UsageError, match=r"needs jax and jaxlib 0\.8\.2 or newer, this is"):
            check_distributed_args(args)
    else:
        plan = check_distributed_args(args)
        assert plan is not None and (plan.num_processes, plan.process_id) == (2, 1)


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_prints_the_blogs_table(tmp_path):
    done = run_script(
        "train",
        "--arch",
        "both",
        "--checkpoint-dir",
        tmp_path / "ck",
        "--no-tensorboard",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Atten_Model  Linear_Model" in done.stdout
    table = parse_table(done.stdout)
    assert set(table) == set(BLOG_TABLE)
    for (metric, split), expected in BLOG_TABLE.items():
        atol = LOSS_ACROSS_VERSIONS_ATOL if metric == "loss" else 0
        for got, want in zip(table[metric, split], expected):
            assert abs(got - want) <= atol + 1e-9, (metric, split, got, want)
