"""The torch ensemble's spawned workers end when the process that spawned them dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.torch]

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 120  # spawning and importing torch in two workers takes ~10 s here

# Trains for far longer than the test waits, so only the parent's death can end it.
PARENT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "benchmarks")
    import numpy as np
    import torch_ensemble
    x = np.random.default_rng(0).normal(size=(120, 4)).astype(np.float32)
    y = np.arange(120) % 3
    params = [a.numpy() for a in torch_ensemble.init_params("atten", 4)]
    setting = torch_ensemble.Setting(chunk=2, processes=2, threads=1)
    torch_ensemble.train_ensemble(x, y, params, 10_000_000, method="manual", setting=setting)
    """
)


def _workers(pid: int) -> list[int]:
    """The spawned workers of ``pid`` (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _stat(int(entry.name))[1] == pid:
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in command:
                found.append(int(entry.name))
    return found


def _stat(pid: int) -> tuple[str, int]:
    """(state, parent pid) of a process; ("gone", 0) once it has ended."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return "gone", 0
    return fields[0], int(fields[1])


def _running(pid: int) -> bool:
    return _stat(pid)[0] not in ("gone", "Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_exit_when_their_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + DEADLINE_S
        # The workers have started training once they use CPU time; before that they may
        # still be importing (a worker orphaned then ends as soon as it starts, too).
        while len(workers) < 2 and time.monotonic() < deadline:
            assert parent.poll() is None, "the parent ended on its own"
            workers = [p for p in _workers(parent.pid) if _running(p)]
            time.sleep(0.2)
        assert len(workers) == 2, f"expected 2 spawned workers, found {workers}"
        time.sleep(5)  # into the workers' start-up or training
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_running, workers)), f"workers {workers} outlived their parent"
    finally:
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
