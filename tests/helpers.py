"""What several test files share: running a command in-process or as a process, its
one-line errors, small checkpoints, parameter leaves, the printed evaluation table, and
a reader of TensorBoard event files."""

from __future__ import annotations

import functools
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
SUBPROCESS_TIMEOUT = 300  # seconds; generous because the suite may share 2 busy cores
EXIT_USAGE = 2  # jax_iris.cli.common.EXIT_USAGE, restated: the tests pin the contract
# Every short training run in the suite (fit, the train command, in-process or as a script)
# trains this many epochs in one chunk (log_every = SHORT_EPOCHS): the same compiled program
# per arch and head, so the compilation cache serves all but the first.
SHORT_EPOCHS = 20


class Outcome(NamedTuple):
    code: int
    out: str
    err: str


def call(main: Callable[[list[str]], int], argv: Sequence[object], capsys) -> Outcome:
    """``main(argv)`` as its script would run it; argparse's exits become the exit code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


def assert_one_line_error(err: str, *needles: str) -> None:
    """stderr holds exactly one line, no traceback, mentioning every needle."""
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def assert_usage_error(outcome: Outcome | subprocess.CompletedProcess, prog: str, *needles):
    """Exit 2 and one stderr line ``<prog>: error: ...`` naming every needle."""
    code = outcome.returncode if isinstance(outcome, subprocess.CompletedProcess) else outcome.code
    err = outcome.stderr if isinstance(outcome, subprocess.CompletedProcess) else outcome.err
    assert code == EXIT_USAGE, (code, err)
    assert err.startswith(f"{prog}: error: "), err
    assert_one_line_error(err, *needles)


def run_python(
    args: Sequence[object], cwd: Path, env: dict[str, str] | None = None, timeout: float = 0
) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd``, text output captured."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout or SUBPROCESS_TIMEOUT,
    )


def xla_cache_env() -> dict[str, str]:
    """JAX's own settings for the suite's compilation cache (conftest.py), for a child that
    trains without a command (a command turns the cache on itself): a later run of the
    same child finds its programs compiled."""
    return {
        "JAX_COMPILATION_CACHE_DIR": os.environ["JAX_IRIS_CACHE_DIR"],
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


def run_script(name: str, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    """``python scripts/<name>.py ARGS`` in ``cwd``, as a user runs it."""
    return run_python([SCRIPTS / f"{name}.py", *args], cwd)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def fake_history(epochs: int, start: float = 1.1, end: float = 0.6) -> dict[str, np.ndarray]:
    """A smooth, recognisable curve: loss falls from start to end, accuracy rises."""
    t = np.linspace(0.0, 1.0, epochs, dtype=np.float32)
    return {
        "loss": (start + (end - start) * t).astype(np.float32),
        "accuracy": (0.3 + 0.6 * t**2).astype(np.float32),
    }


@functools.cache
def _init_program(spec) -> Callable:
    """``init_params`` for the arch of registry entry ``spec``, in one compiled program (the
    same bits as Flax's eager init, which compiles a random draw per parameter shape); keyed
    on the entry, so that a name registered again gets its own."""
    import jax

    from jax_iris.models import init_params

    return jax.jit(lambda key: init_params(spec.name, key))


def save_untrained(
    path: Path,
    arch: str = "atten",
    *,
    seed: int = 0,
    epochs: int = 3,
    history: bool = True,
    **config,
) -> Path:
    """A valid checkpoint of freshly initialised params (no training), with a fake history."""
    import jax

    from jax_iris import registry
    from jax_iris.config import TrainConfig
    from jax_iris.io import checkpoint

    config = TrainConfig(arch=arch, epochs=epochs, seed=seed, **config)
    params = _init_program(registry.arch_spec(arch))(jax.random.key(seed))
    hist = fake_history(epochs) if history else None
    return checkpoint.save(path, params, config=config, history=hist)


def leaves(tree) -> list[np.ndarray]:
    import jax

    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def parse_table(stdout: str) -> dict[tuple[str, str], list[float]]:
    """``{(metric, split): [value per column]}`` from the printed evaluation table."""
    table, metric = {}, None
    for line in stdout.splitlines():
        words = line.split()
        if words and words[0] in ("Loss", "Accuracy"):
            metric, words = words[0].lower(), words[1:]
        if metric and words and words[0].endswith("_Data"):
            split = words[0].removesuffix("_Data").lower()
            table[metric, split] = [float(w) for w in words[1:]]
    return table


def read_events(path: Path) -> list:
    """Every record of a TensorBoard event file, each checksum verified.

    tensorboardX writes events but has no reader, and tensorboard's EventAccumulator is
    not installed, so the TFRecord framing is parsed here and each record decoded with
    tensorboardX's own ``Event`` protobuf::

        uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)
    """
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    data = path.read_bytes()
    events, offset = [], 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        assert header_crc == masked_crc32c(header), f"bad length checksum at byte {offset}"
        body = data[offset + 12 : offset + 12 + length]
        (body_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        assert len(body) == length and body_crc == masked_crc32c(body), f"bad record at {offset}"
        events.append(Event.FromString(body))
        offset += 16 + length
    return events
