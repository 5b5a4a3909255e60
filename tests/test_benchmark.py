"""``benchmarks/benchmark.py`` follows the command-line rules: every flag checked before
any work, each refusal one line naming the flag and its bounds, ``--help`` stating them,
Ctrl-C one line. The benchmark is not installed; pytest finds ``benchmarks/`` on its path
(``pythonpath`` in pyproject.toml), as Python does when it runs the script."""

from __future__ import annotations

import benchmark
import pytest
from helpers import EXIT_USAGE, ROOT, call, run_python, snapshot

EXIT_INTERRUPTED = 130  # jax_iris.cli.common.EXIT_INTERRUPTED, restated: the contract
NOTHING_WRITTEN = "nothing was written, earlier files are as they were"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
    return err.rstrip("\n")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--bogus"], "unrecognized arguments: --bogus (see --help)"),
        (["--repeats", "0"], "--repeats must be an integer from 1 to 1,000, got 0"),
        (["--epochs", "0"], "--epochs must be an integer from 1 to 10,000,000, got 0"),
        (
            ["--epochs", "100000000000"],
            "--epochs must be an integer from 1 to 10,000,000, got 100000000000",
        ),
        (["--seeds", "0"], "--seeds must be an integer from 1 to 1,000,000, got 0"),
        (
            ["--seeds", "4294967297"],
            "--seeds must be an integer from 1 to 1,000,000, got 4294967297",
        ),
        (
            ["--serial-seeds", "0"],
            "--serial-seeds must be an integer from 1 to 1,000,000, got 0",
        ),
        (
            ["--grid-epochs", "0"],
            "--grid-epochs must be an integer from 1 to 10,000,000, got 0",
        ),
        (
            ["--search-epochs", "0"],
            "--search-epochs must be an integer from 1 to 10,000,000, got 0",
        ),
        (
            ["--group-size", "-5"],
            "--group-size must be an integer from 0 to 1,000,000 (0: the library's default),"
            " got -5",
        ),
        (
            ["--seeds", "1000000", "--epochs", "1000"],
            "--seeds x --epochs is 1,000,000,000; part (b) keeps every net's per-epoch"
            " metrics, so at most 100,000,000 (or --skip b)",
        ),
    ],
    ids=[
        "bogus",
        "repeats",
        "epochs",
        "epochs-1e11",
        "seeds",
        "seeds-2**32+1",
        "serial-seeds",
        "grid-epochs",
        "search-epochs",
        "group-size",
        "seeds-x-epochs",
    ],
)
def test_bad_flags_are_refused_in_one_line_before_work(workdir, capsys, argv, line):
    code, out, err = call(benchmark.main, argv, capsys)
    assert code == EXIT_USAGE
    assert one_line(err) == f"benchmark.py: error: {line}"
    assert out == "" and snapshot(workdir) == {}


def test_an_unknown_arch_is_refused_in_one_line(workdir, capsys):
    code, out, err = call(benchmark.main, ["--arch", "x"], capsys)
    assert code == EXIT_USAGE
    # argparse quotes the choices differently across Python versions
    assert one_line(err).startswith("benchmark.py: error: argument --arch: invalid choice: 'x'")
    assert "atten" in err and "linear" in err
    assert out == "" and snapshot(workdir) == {}


def test_help_states_the_bounds(capsys):
    code, out, err = call(benchmark.main, ["--help"], capsys)
    assert (code, err) == (0, "")
    text = " ".join(out.split())
    for bound in ("1 to 1,000,000", "1 to 10,000,000", "1 to 1,000 ", "100,000,000"):
        assert bound in text


def test_ctrl_c_is_one_line(workdir, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark, "use_host_devices", interrupt)
    code, out, err = call(benchmark.main, ["--skip", "a", "b", "c"], capsys)
    assert code == EXIT_INTERRUPTED
    assert one_line(err) == f"benchmark.py: interrupted; {NOTHING_WRITTEN}"
    assert out == "" and snapshot(workdir) == {}


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_script_runs_from_anywhere(tmp_path):
    proc = run_python([ROOT / "benchmarks" / "benchmark.py", "--help"], cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("usage: benchmark.py")
    for flag in ("--arch", "--seeds", "--epochs", "--repeats", "--skip"):
        assert flag in proc.stdout
