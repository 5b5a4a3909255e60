"""A signal fuzzer: each command in a child process, SIGINT, SIGTERM or SIGKILL at a random
moment of its whole life (start-up, imports, training, the commit), then the promises:

- exit 0 with every output new, or the signal's status (130, 143) with one stderr line
  saying what was kept, or -9 for SIGKILL; never a traceback;
- every output either entirely the earlier set or entirely the new one: at once, or for
  SIGKILL once the next run into the folder has recovered (``fileio.recover``, which
  every commit runs first);
- no temporaries or journals left after that.

Stop signals are blocked in the child from its first instruction (the mask is inherited,
the program unblocks them once its handlers are in place), so a signal sent before the
interpreter reaches the program's first line lands there instead of in Python's own
start-up, which no program can handle. The seed is printed (``pytest -s``) and set with
``JAX_IRIS_FUZZ_SEED``; ``JAX_IRIS_FUZZ_TRIES`` scales the tries per command.
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SCRIPTS, SHORT_EPOCHS, SUBPROCESS_TIMEOUT, save_untrained, snapshot

from jax_iris.cli.common import NOTHING_WRITTEN, OUTPUTS_WRITTEN
from jax_iris.io import fileio

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "stopped by SIGTERM"}
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
TRIES = {"train": 12, "plot": 8, "evaluate": 6, "sweep": 6}  # about a minute on 2 cores
COMMANDS = {
    "train": ["--epochs", SHORT_EPOCHS, "--log-every", SHORT_EPOCHS],
    "plot": ["ck/atten.pkl", "--out", "figs"],
    "evaluate": ["ck/atten.pkl"],
    "sweep": ["--arch", "atten", "--seeds", "2", "--epochs", SHORT_EPOCHS, "--out", "out"],
}
COMMANDS["train"] += ["--checkpoint-dir", "checkpoints"]
COMMANDS["sweep"] += ["--host-devices", "1"]
_VARYING = [  # names that differ from run to run: a time stamp, an event file's host part
    (re.compile(r"events\.out\.tfevents\.[^/]*"), "EVENTS"),
    (re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d[^/]*"), "STAMP"),
]


def earlier_outputs(folder: Path) -> dict[str, bytes]:
    """A folder holding an earlier run's outputs of every command, to be kept or replaced."""
    (folder / "ck").mkdir(parents=True)
    save_untrained(folder / "ck" / "atten.pkl")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "atten.pkl").write_bytes((folder / "ck" / "atten.pkl").read_bytes())
    for name in ("figs/accuracy.png", "figs/loss.png", "out/sweep.csv", "out/summary.json"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"earlier " + name.encode())
    return snapshot(folder)


def kinds(names) -> frozenset[str]:
    out = set()
    for name in names:
        for pattern, placeholder in _VARYING:
            name = pattern.sub(placeholder, name)
        out.add(name)
    return frozenset(out)


# The sweep's resumable store keeps what it has trained across an interruption, by
# design; it is not an output set (its own consistency is its tests' business).
_NOT_OUTPUTS = re.compile(r"(^|/)\.sweep-store(/|$)")


def changed(before: dict[str, bytes], after: dict[str, bytes]) -> frozenset[str]:
    before = {n: b for n, b in before.items() if not _NOT_OUTPUTS.search(n)}
    after = {n: b for n, b in after.items() if not _NOT_OUTPUTS.search(n)}
    names = {n for n in after if before.get(n) != after[n]} | (set(before) - set(after))
    return kinds(names)


def strays(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob(".*")
        if p.name.endswith(".tmp") or p.name.startswith(fileio.JOURNAL_PREFIX)
    )


def run(command: str, folder: Path, signum: int | None = None, delay: float = 0.0):
    """The command in ``folder``; ``signum`` sent ``delay`` seconds after it starts."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        child = subprocess.Popen(
            [sys.executable, SCRIPTS / f"{command}.py", *map(str, COMMANDS[command])],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        if signum is not None:
            try:
                child.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                child.send_signal(signum)
        _, err = child.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        child.kill()
    return child.returncode, err


def recover_all(folder: Path) -> None:
    """What the next run into each folder does first."""
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fileio.recover(sub)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("command", list(COMMANDS))
def test_any_signal_at_any_moment_keeps_the_promises(tmp_path, command):
    seed = int(os.environ.get("JAX_IRIS_FUZZ_SEED", time.time_ns() % 1_000_000))
    scale = float(os.environ.get("JAX_IRIS_FUZZ_TRIES", "1"))
    rng = random.Random(f"{seed}-{command}")
    print(f"\nsignal fuzz {command}: seed {seed} (JAX_IRIS_FUZZ_SEED={seed} repeats it)")

    reference = tmp_path / "reference"
    before = earlier_outputs(reference)
    start = time.perf_counter()
    code, err = run(command, reference)
    span = time.perf_counter() - start  # the whole life of an undisturbed run
    assert (code, err) == (0, ""), err
    new = changed(before, snapshot(reference))

    outcomes: collections.Counter[str] = collections.Counter()
    for attempt in range(max(1, round(TRIES[command] * scale))):
        signum = rng.choice(SIGNALS)
        delay = rng.uniform(0.0, span * 1.1)
        folder = tmp_path / f"try{attempt}"
        before = earlier_outputs(folder)
        code, err = run(command, folder, signum, delay)
        case = (
            f"{command} try {attempt}: {signal.Signals(signum).name} at {delay:.2f} s (seed {seed})"
        )
        assert "Traceback" not in err and "Exception ignored" not in err, f"{case}: {err}"
        if signum == signal.SIGKILL and code == -signal.SIGKILL:
            recover_all(folder)
            kept = None
        elif code == 0:
            assert err == "", f"{case}: {err}"
            kept = OUTPUTS_WRITTEN
        else:
            status = 128 + signum
            assert code == status, f"{case}: exit {code}, {err}"
            line = f"{command}.py: {WORDS[signum]}; "
            assert err.startswith(line) and err.count("\n") == 1, f"{case}: {err!r}"
            kept = err[len(line) :].rstrip("\n")
            if kept != OUTPUTS_WRITTEN:  # the command's own words (the sweep's store) or
                kept = NOTHING_WRITTEN  # NOTHING_WRITTEN: either way no output replaced
        after = snapshot(folder)
        now = changed(before, after)
        assert now in (frozenset(), new), f"{case}: a mix of old and new: {sorted(now)}"
        if kept == NOTHING_WRITTEN:
            assert now == frozenset(), f"{case}: said nothing was written, yet {sorted(now)}"
        if kept == OUTPUTS_WRITTEN:
            assert now == new, f"{case}: said every output was written, yet {sorted(now)}"
        assert strays(folder) == [], f"{case}: {strays(folder)}"
        outcome = "exit 0" if code == 0 else f"exit {code}"
        outcomes[f"{signal.Signals(signum).name} -> {outcome}, {'new' if now else 'old'}"] += 1
    print(f"signal fuzz {command}: {dict(sorted(outcomes.items()))}")
