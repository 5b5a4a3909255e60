"""scripts/gpu_check.sh, as far as a machine without a GPU can check it: it refuses in one
line, and its --allow-cpu dry run writes the whole report."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import jax
import pytest
from helpers import ROOT, SUBPROCESS_TIMEOUT, assert_one_line_error, xla_cache_env

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash"),
    pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the CPU-only behaviour"),
]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
SECTIONS = (
    "## Devices and versions",
    "## The blog's table at matmul precision highest",
    "## The blog's table at matmul precision default",
    "## Parity tests (JAX at highest on this device, PyTorch on the CPU)",
    "## Sweep scaling curve (compile time = first call - second call)",
    "## Benchmark",
)


def gpu_check(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT * 2,
    )


@pytest.mark.slow
def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    done = gpu_check(tmp_path, "--out", str(tmp_path / "report.md"))
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "gpu_check.sh: error: JAX finds no GPU (backend: cpu)")
    assert "--allow-cpu" in done.stderr
    assert not (tmp_path / "report.md").exists()

    done = gpu_check(tmp_path, "--frobnicate")
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "unknown argument '--frobnicate'")


@pytest.mark.slow
def test_the_dry_run_writes_every_section(tmp_path):
    report = tmp_path / "report.md"
    sizes = {"SIZES": "8 16", "EPOCHS": "5"}
    done = gpu_check(tmp_path, "--allow-cpu", "--out", str(report), **sizes, **xla_cache_env())
    assert done.returncode == 0, done.stderr
    text = report.read_text()
    assert text.startswith("# GPU check")
    assert "**Dry run on the CPU (--allow-cpu): no GPU figures.**" in text
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert text.count("Exit 0 in") == len(SECTIONS), text  # every step ran and passed
    assert "Test_Data         0.9333        0.8000" in text  # the blog's accuracies
    assert "passed" in text and "failed" not in text
    rows = [line.split() for line in text.splitlines() if line.strip().startswith(("8 ", "16 "))]
    assert [row[0] for row in rows] == ["8", "16"] and all(float(row[3]) > 0 for row in rows)
    assert "(a) one net" in text
