"""Hostile checkpoint files: crafted pickles, special files, bounds, quoting, fuzzing.

Loads that could crash the interpreter or exhaust memory run in a child process
(``CHILD``), which reports per file the outcome, the load time and the growth of
peak memory; a child that dies (a segfault, say) fails the test with the file it
was loading.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import pickletools
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jax_iris.io import checkpoint, safe_pickle
from jax_iris.io.checkpoint import MAX_CHECKPOINT_BYTES, CheckpointError
from jax_iris.models import flatten_params, param_shapes, unflatten_params
from jax_iris.quote import clean_path, quote
from jax_iris.train import TrainConfig

MAX_GROWTH_BYTES = 300 * 10**6  # peak memory a load may add to the process, whatever the file
MAX_LOAD_SECONDS = 5.0  # per file; the worst crafted file takes about 0.5 s on a 2-core machine
CHILD_TIMEOUT = 120  # seconds for one child, start-up (imports jax, ~1-2 s) included
FUZZ_SEED = 20240601
FUZZ_BATCH = 1000  # files per child: one start-up (~2 s) per batch keeps the fuzzing to ~10 s

# Loads each path it is given (JSON list on stdin); prints {"start": i} before each
# load, flushed, then one JSON line with the outcome. Peak memory is reset before
# each load (/proc/self/clear_refs) so that each file's growth is its own.
CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
from jax_iris import models, registry
from jax_iris.io import checkpoint
from jax_iris.train import TrainConfig
for arch in registry.ARCHS:
    models.param_shapes(arch)

def vm():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) * 1024
    return fields

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

def check(loaded):
    flat = models.flatten_params(loaded.params)
    shapes = {name: value.shape for name, value in flat.items()}
    assert shapes == models.param_shapes(loaded.arch), shapes
    assert all(v.dtype.name in ("float32", "float64") for v in flat.values())
    assert isinstance(loaded.config, TrainConfig) and loaded.config.arch == loaded.arch
    for value in (loaded.history or {}).values():
        assert value.ndim == 1 and value.flags.owndata

for index, path in enumerate(json.loads(sys.stdin.read())):
    print(json.dumps({"start": index}), flush=True)
    reset = reset_peak()
    before = vm()
    start = time.monotonic()
    try:
        loaded = checkpoint.load(path)
        outcome, message = "ok", ""
    except checkpoint.CheckpointError as err:
        outcome, message = "CheckpointError", str(err)
    except BaseException as err:
        outcome, message = type(err).__name__, str(err)[:500]
    seconds = time.monotonic() - start
    growth = vm()["VmHWM"] - before["VmRSS"]
    if outcome == "ok":
        try:
            check(loaded)
        except AssertionError as err:
            outcome, message = "loaded but wrong", str(err)[:500]
        del loaded
    print(json.dumps({"index": index, "outcome": outcome, "message": message,
                      "seconds": seconds, "growth": growth, "reset": reset}), flush=True)
"""


def load_in_child(paths: list[Path], cwd: Path) -> list[dict]:
    """Each path's outcome, loaded in one child; fails the test if the child dies or hangs."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD],
            input=json.dumps([str(p) for p in paths]),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            cwd=cwd,
            env=env,
        )
    except subprocess.TimeoutExpired as err:
        lines = (err.stdout or b"").decode(errors="replace").splitlines()
        started = [json.loads(line)["start"] for line in lines if line.startswith('{"start"')]
        where = paths[started[-1]] if started else "start-up"
        pytest.fail(f"the loading child hung for {CHILD_TIMEOUT} s, at {where}")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        started = [line["start"] for line in lines if "start" in line]
        where = paths[started[-1]] if started else "start-up"
        pytest.fail(f"the loading child died (exit {proc.returncode}) at {where}: {proc.stderr}")
    results = [line for line in lines if "index" in line]
    assert [r["index"] for r in results] == list(range(len(paths)))
    return results


def assert_safe_message(message: str) -> None:
    assert message.isprintable(), f"raw control characters in {message!r}"
    assert len(message) < 600, message[:200]
    assert "internal check failed" not in message  # the loader's safety net never fires


# ---------------------------------------------------------------- crafted files


def _params(arch: str, seed: int = 0) -> dict:
    """Params of the arch's shapes (random numbers: no jax compile needed)."""
    rng = np.random.default_rng(seed)
    flat = {
        name: rng.standard_normal(shape).astype(np.float32)
        for name, shape in param_shapes(arch).items()
    }
    return unflatten_params(flat)


@functools.cache
def _valid_bytes() -> bytes:
    flat = flatten_params(_params("atten"))
    records = {
        k: {"dtype": "<f4", "shape": list(v.shape), "data": v.tobytes()} for k, v in flat.items()
    }
    payload = {
        "format": checkpoint.FORMAT,
        "version": 2,
        "arch": "atten",
        "config": TrainConfig(epochs=3).to_dict(),
        "metrics": None,
        "history": None,
        "params": records,
    }
    return pickle.dumps(payload, protocol=4)


def _valid_payload() -> dict:
    """A fresh copy of a valid version 2 payload, to edit."""
    return pickle.loads(_valid_bytes())


def _stream(*parts: bytes) -> bytes:
    return b"\x80\x04" + b"".join(parts) + b"."


def _text(s: str) -> bytes:
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _pointer_exploit() -> bytes:
    """A numpy object array whose data is 8 bytes from the file: numpy follows them as a pointer.

    The dtype's pickled flags are zeroed, so numpy takes raw bytes for an object array.
    """
    raw = pickle.dumps(np.array([None], dtype=object), protocol=4)
    raw = raw[:2] + raw[11:]  # drop the FRAME so the edits below need no length fix
    evil = raw.replace(b"]\x94Na", b"C\x08" + b"\x41" * 8).replace(b"K?t", b"K\x00t")
    assert evil != raw and len(evil) < 160
    return evil


def _zero_stride() -> bytes:
    """numpy.ndarray((10**12,), "<f4", 4 bytes, 0, (0,)): 10^12 elements over 4 bytes."""
    return _stream(
        _text("numpy"),
        _text("ndarray"),
        b"\x93(\x8a\x06" + (10**12).to_bytes(6, "little") + b"\x85",
        _text("<f4"),
        b"C\x04\0\0\0\0K\x00K\x00\x85tR",
    )


def _v1_file(tmp: Path) -> bytes:
    """What version 1 wrote: numpy arrays pickled in-band, with the format tag."""
    payload = _valid_payload()
    payload["version"] = 1
    payload["params"] = {k: np.frombuffer(v["data"], "<f4") for k, v in payload["params"].items()}
    return pickle.dumps(payload, protocol=4)


def _v1_holding(evil: bytes) -> bytes:
    """A version 1 checkpoint whose history is ``evil`` (a pickle of one numpy object)."""
    tag = _text("format") + _text(checkpoint.FORMAT) + _text("version") + b"K\x01"
    return _stream(b"}(" + tag + _text("history") + evil[2:-1] + b"u")


def _valid_with(**changes) -> bytes:
    payload = _valid_payload()
    payload.update(changes)
    return pickle.dumps(payload, protocol=4)


def _history_at_cap() -> bytes:
    """The largest valid file: a float32 history filling the cap."""
    n = (MAX_CHECKPOINT_BYTES - 20_000) // 8
    loss, accuracy = ({"dtype": "<f4", "shape": [n], "data": bytes(4 * n)} for _ in range(2))
    assert loss["data"] is not accuracy["data"]
    return _valid_with(history={"loss": loss, "accuracy": accuracy})


CRAFTED = {
    # name: (make bytes or a path, the expected outcome: "ok" or a message fragment)
    "memo-bomb-9-bytes": (
        lambda tmp: b"\x80\x04Nr" + (2**28).to_bytes(4, "little") + b".",
        "memo index 268435456 skips unwritten entries",
    ),
    "memo-get-unwritten": (lambda tmp: _stream(b"j\xff\xff\xff\x7f"), "was never written"),
    "v1-checkpoint": (_v1_file, "format version 1"),
    "numpy-pointer": (lambda tmp: _pointer_exploit(), "import numpy."),
    "numpy-pointer-in-v1": (lambda tmp: _v1_holding(_pointer_exploit()), "format version 1"),
    "zero-stride-numpy": (lambda tmp: _zero_stride(), "import numpy.ndarray"),
    "zero-stride-v2": (
        lambda tmp: _valid_with(
            history={
                "loss": {"dtype": "<f4", "shape": [10**12], "data": b"\0" * 4},
                "accuracy": {"dtype": "<f4", "shape": [10**12], "data": b"\0" * 4},
            }
        ),
        "history/loss holds 4 bytes of data; shape (1000000000000,) of float32 needs",
    ),
    "nested-100000-lists": (
        lambda tmp: _stream(b"]" * 100_000 + b"a" * 99_999),
        "more than 100,000 pickle opcodes",
    ),
    "nested-40-lists": (lambda tmp: _stream(b"]" * 40 + b"a" * 39), "nests deeper than 32"),
    "nested-100000-marks": (lambda tmp: _stream(b"(" * 100_000 + b"l" * 100_000), "nests deeper"),
    "nested-in-metrics": (
        lambda tmp: _valid_with(metrics=_deep_dict(30)),
        "metrics/k/k/k/k is a dict of 1 item; metrics are dicts of numbers, at most 4 deep",
    ),
    "huge-frame": (
        lambda tmp: b"\x80\x04\x95" + (2**62).to_bytes(8, "little") + b"N.",
        "truncated, corrupt or not a pickle",
    ),
    "huge-bytes-length": (
        lambda tmp: _stream(b"\x8e" + (2**62).to_bytes(8, "little")),
        "truncated, corrupt or not a pickle",
    ),
    "text-of-60MB": (
        lambda tmp: _stream(b"\x8d" + (60 * 2**20).to_bytes(8, "little") + b"a" * 60 * 2**20),
        "a text of 62,914,560 bytes",
    ),
    "astral-texts-4x": (
        lambda tmp: _stream(
            b"("
            + (b"X" + (65535).to_bytes(4, "little") + ("a" * 65531 + "\U0001f600").encode()) * 1400
            + b"l"
        ),
        "more than 1,048,576 characters of text",
    ),
    "long-decimal": (lambda tmp: _stream(b"L" + b"9" * 10**7 + b"L\n"), "truncated, corrupt"),
    "long4-int": (
        lambda tmp: _stream(b"\x8b" + (10**7).to_bytes(4, "little") + b"\x01" * 10**7),
        "uses pickle opcode LONG4",
    ),
    "99999-opcodes": (lambda tmp: _stream(b"N0" * 49_998 + b"N"), "not a jax_iris checkpoint"),
    "trailing-bytes": (lambda tmp: _valid_with() + b"\0" * 1000, "1,000 bytes follow the end"),
    "bytes-at-cap": (
        lambda tmp: (
            _stream(b"\x8e" + (MAX_CHECKPOINT_BYTES - 12).to_bytes(8, "little"))[:-1]
            + b"\0" * (MAX_CHECKPOINT_BYTES - 12)
            + b"."
        ),
        "not a jax_iris checkpoint",
    ),
    "history-at-cap": (lambda tmp: _history_at_cap(), "ok"),
    "shared-history-data": (
        lambda tmp: _shared_history(),
        f"bytes, more than the {MAX_CHECKPOINT_BYTES:,} bytes a checkpoint may hold",
    ),
    "over-cap-sparse": (lambda tmp: _sparse(tmp, MAX_CHECKPOINT_BYTES + 1), "refused unread"),
    "over-cap-1TB-sparse": (lambda tmp: _sparse(tmp, 2**40), "is 1,099,511,627,776 bytes"),
    "fifo": (lambda tmp: _fifo(tmp), "is a named pipe (FIFO), not a checkpoint file"),
    "dev-zero": (lambda tmp: Path("/dev/zero"), "is a character device"),
    "dev-urandom": (lambda tmp: Path("/dev/urandom"), "is a character device"),
    "folder": (lambda tmp: tmp, "is a folder, not a checkpoint file"),
    "valid": (lambda tmp: _valid_with(), "ok"),
}


def _deep_dict(depth: int) -> dict:
    value: dict = {"loss": 0.5}
    for _ in range(depth):
        value = {"k": value}
    return value


def _shared_history() -> bytes:
    """loss and accuracy name one bytes object: more array memory than file."""
    n = MAX_CHECKPOINT_BYTES // 2 // 4 + 1
    record = {"dtype": "<f4", "shape": [n], "data": bytes(4 * n)}
    return _valid_with(history={"loss": record, "accuracy": record})


def _sparse(tmp: Path, size: int) -> Path:
    path = tmp / f"sparse_{size}.pkl"
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _fifo(tmp: Path) -> Path:
    path = tmp / "pipe.pkl"
    os.mkfifo(path)
    return path


@pytest.fixture(scope="module")
def crafted_results(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Every crafted file, loaded in one child: {name: (path, outcome)}.

    Peak memory is reset before each load; where the kernel does not allow that,
    each file gets a child of its own so that its peak is its own.
    """
    folder = tmp_path_factory.mktemp("crafted")
    paths = {}
    for name, (make, _) in CRAFTED.items():
        (folder / name).mkdir()
        made = make(folder / name)
        if isinstance(made, bytes):
            paths[name] = folder / name / "crafted.pkl"
            paths[name].write_bytes(made)
        else:
            paths[name] = made
    names = list(CRAFTED)
    before = [_digest(paths[n]) for n in names]
    results = load_in_child([paths[n] for n in names], folder)
    if not all(result["reset"] for result in results):
        results = [load_in_child([paths[n]], folder)[0] for n in names]
    for name, result, digest in zip(names, results, before):
        result["unchanged"] = _digest(paths[name]) == digest
    return {name: (paths[name], result) for name, result in zip(names, results)}


def _digest(path: Path) -> tuple | None:
    """A regular file's size, mtime and (up to the cap) SHA-256; special files are not opened."""
    if not path.is_file():
        return None
    info = path.stat()
    small = info.st_size <= MAX_CHECKPOINT_BYTES
    return info.st_size, info.st_mtime_ns, small and hashlib.sha256(path.read_bytes()).digest()


@pytest.mark.subprocess
@pytest.mark.parametrize("name", list(CRAFTED))
@pytest.mark.slow
def test_crafted_file_is_refused_within_bounds(crafted_results, name):
    path, result = crafted_results[name]
    expected = CRAFTED[name][1]
    if expected == "ok":
        assert (result["outcome"], result["message"]) == ("ok", "")
    else:
        assert result["outcome"] == "CheckpointError", result
        assert expected in result["message"]
        assert result["message"].startswith(f"{clean_path(path)}: ")
        assert_safe_message(result["message"])
    assert result["seconds"] < MAX_LOAD_SECONDS
    assert result["growth"] < MAX_GROWTH_BYTES, f"{result['growth'] / 1e6:.0f} MB"
    assert result["unchanged"]  # loading never writes


def test_loading_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "bad.pkl"
    path.write_bytes(_valid_with(arch="nope"))
    before = (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_mode)
    with pytest.raises(CheckpointError):
        checkpoint.load(path)
    assert (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_mode) == before
    assert os.listdir(tmp_path) == ["bad.pkl"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_controls_plain_pickle_does_run_the_exploits(tmp_path):
    """Without the scan, the pointer file crashes the interpreter and the stride file
    declares 10^12 elements: the refusals above are what keeps them away."""
    (tmp_path / "ptr.pkl").write_bytes(_pointer_exploit())
    (tmp_path / "stride.pkl").write_bytes(_zero_stride())
    code = (
        "import pickle, resource, sys; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); "
        "a = pickle.loads(open(sys.argv[1], 'rb').read()); "
        "print(a.size); print(repr(a))"
    )
    run = {
        name: subprocess.run(
            [sys.executable, "-c", code, name],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
        )
        for name in ("ptr.pkl", "stride.pkl")
    }
    assert run["ptr.pkl"].returncode != 0  # SIGSEGV (-11) with numpy 2
    assert run["stride.pkl"].stdout.splitlines()[0] == str(10**12)


# ---------------------------------------------------------------- refusals, in-process


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_stream(b"N\x94h\x00h\x01"), "memo index 1 was never written"),
        (_stream(b"Nq\x01"), "memo index 1 skips unwritten entries"),
        (_stream(b"N\x94N\x94q\x00"), "memo index 0 is not the next one"),  # written twice
        # a list shared through the memo, then filled: the lists holding it would nest deeper
        (_stream(b"]\x94]\x94a0h\x01]a0N"), "changes a container after sharing it"),
        (_stream(b"N2"), "refused: it uses pickle opcode DUP, which"),
        (_stream(b"N", b"Nt"), "needs a MARK"),
        (_stream(b"a"), "stack underflows"),
        (_stream(b"(N"), "does not end with one object"),
        (_stream(b"NN"), "does not end with one object"),
        (b"\x80\x04N", "truncated, corrupt or not a pickle (pickle exhausted before seeing STOP)"),
        (_stream(b"\xff"), "truncated, corrupt or not a pickle (at position 2, opcode b'\\xff'"),
        (_stream(b"cposix\nsystem\n"), "refused: it asks to import posix.system, which"),
        (_stream(_text("os"), _text("system"), b"\x93"), "refused: it asks to import os.system"),
        (_stream(b"\x82\x01"), "refused: it asks to import extension 1"),
        (_stream(b"P1\n"), "asks to call or build objects with pickle opcode PERSID"),
        (_stream(b"\x8f"), "refused: it uses pickle opcode EMPTY_SET"),
        (_stream(b"I12\n"), "refused: it uses pickle opcode INT"),
        (_stream(b"\x96\x00\x00\x00\x00\x00\x00\x00\x00"), "uses pickle opcode BYTEARRAY8"),
        (_stream(b"c\x1b[2J\nx\n"), "refused: it asks to import \\x1b[2J.x, which"),
    ],
)
def test_scan_refusals_name_the_problem(tmp_path, data, message):
    path = tmp_path / "s.pkl"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert_safe_message(str(info.value))


def test_v1_is_refused_with_how_to_get_a_new_file(tmp_path):
    path = tmp_path / "atten.pkl"
    path.write_bytes(_v1_file(tmp_path))
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert str(info.value) == (
        f"{path}: format version 1, no longer read: retrain "
        "(python scripts/train.py --arch ARCH) or convert a .pth "
        "(python scripts/convert.py model.pth ARCH.pkl) to get a version 2 file"
    )


def test_numpy_globals_beside_others_are_not_taken_for_v1(tmp_path):
    """A v1-looking file that also names os.system is reported as what it is."""
    evil = _stream(_text("os"), _text("system"), b"\x93")
    path = tmp_path / "x.pkl"
    path.write_bytes(_v1_holding(_pointer_exploit())[:-1] + b"0" + evil[2:])
    message = _error(path)
    assert "refused: it asks to import os.system, which a jax_iris checkpoint never" in message
    assert "and 0 more" not in message


def test_opcode_scan_and_loader_agree_on_valid_files(tmp_path):
    """Our own files pass the scan: every opcode is one the scan admits."""
    path = checkpoint.save(
        tmp_path / "a.pkl",
        _params("linear", 1),
        config=TrainConfig(arch="linear", epochs=2),
        metrics={"train": {"loss": 1.0, "accuracy": 0.5}, "val": None},
        history={"loss": np.ones(2), "accuracy": np.zeros(2)},
    )
    ops = [op.name for op, _, _ in pickletools.genops(path.read_bytes())]
    assert len(ops) < safe_pickle.MAX_OPCODES // 100
    loaded = checkpoint.load(path)
    assert loaded.metrics == {"train": {"loss": 1.0, "accuracy": 0.5}, "val": None}
    assert loaded.history["loss"].dtype == np.float64


# ---------------------------------------------------------------- messages quoting the file


def _error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert_safe_message(message)
    return message


EVIL_TEXT = "\n\x1b[31mred\x1b[0m\r\u202eevil\x7f\x85\u2028"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"arch": EVIL_TEXT}, r"unknown arch '\n\x1b[31mred\x1b[0m\r\u202eevil\x7f\x85\u2028'"),
        ({EVIL_TEXT: 1}, r"unexpected '\n\x1b[31mred\x1b[0m\r\u202eevil\x7f\x85\u2028'"),
        ({"version": EVIL_TEXT}, r"format version '\n\x1b[31mred"),
        ({"config": {"head": EVIL_TEXT}}, r"invalid config: head must be one of"),
        ({"config": {EVIL_TEXT: 1}}, r"unknown config field '\n\x1b[31mred"),
        ({"config": {"epochs": [1] * 10}}, "config field epochs is a list of 10 items"),
        ({"metrics": {"a": EVIL_TEXT}}, r"metrics/a is '\n\x1b[31mred"),
        ({"metrics": {EVIL_TEXT: "x"}}, r"metrics/\n\x1b[31mred"),
    ],
)
def test_messages_escape_what_they_quote(tmp_path, change, fragment):
    path = tmp_path / "q.pkl"
    path.write_bytes(_valid_with(**change))
    assert fragment in _error(path)


def test_a_config_number_too_big_for_a_float_is_one_line(tmp_path):
    path = tmp_path / "c.pkl"
    path.write_bytes(_valid_with(config={**TrainConfig(epochs=3).to_dict(), "lr": 2**2000}))
    assert _error(path) == f"{path}: invalid config: int too large to convert to float"


def test_bad_dtype_string_is_escaped(tmp_path):
    payload = _valid_payload()
    payload["params"]["linear/bias"]["dtype"] = "\x1b]0;pwned\x07" + "x" * 1000
    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    message = _error(path)
    assert r"linear/bias is not a float32/float64 array (dtype '\x1b]0;pwned\x07xxx" in message
    assert len(message) < 200 + len(str(path))


@pytest.mark.slow
def test_a_50MB_field_gives_a_short_message_fast(tmp_path):
    payload = _valid_payload()
    payload["params"]["linear/bias"]["shape"] = b"\n" * 50 * 10**6
    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    start = time.monotonic()
    message = _error(path)
    assert time.monotonic() - start < MAX_LOAD_SECONDS
    shown = quote(b"\n" * 50)
    assert shown.startswith(r"b'\n\n") and len(shown) <= 60
    assert message.endswith(f"linear/bias has shape {shown}, not a list of sizes")


def test_deep_nesting_in_a_field_is_refused_without_recursion(tmp_path):
    tag = _text("format") + _text(checkpoint.FORMAT)
    path = tmp_path / "deep.pkl"
    path.write_bytes(_stream(b"}(" + tag + _text("metrics") + b"]" * 40 + b"a" * 39 + b"u"))
    assert _error(path) == f"{path}: refused: it nests deeper than 32 levels"


def test_path_with_newline_and_escape_stays_one_line(tmp_path):
    path = tmp_path / "ev\nil\x1b[2J.pkl"
    path.write_bytes(b"junk")
    message = _error(path)
    assert message.startswith(str(tmp_path) + r"/ev\nil\x1b[2J.pkl: ")
    missing = tmp_path / ("x" * 150) / ("y" * 150 + "\n.pkl")
    message = _error(missing)
    assert message.endswith(r"yyyyy\n.pkl: no such checkpoint file") and len(message) < 260


# ---------------------------------------------------------------- fuzzing


SNIPPETS = [
    b"r\x00\x00\x00\x10",  # LONG_BINPUT 2**28
    b"j\xff\xff\xff\x7f",  # LONG_BINGET of an unwritten index
    b"h\xff",
    b"q\xff",
    b"\x94",
    b"0",
    b"1",
    b"2" * 50,
    b"(" * 40,
    b"]" * 40 + b"a" * 39,
    b")",
    b"}",
    b"t",
    b"\x85",
    b"s",
    b"u",
    b"e",
    b"a",
    b"l",
    b"d",
    b"cposix\nsystem\n",
    _text("numpy") + _text("dtype") + b"\x93",
    b"R",
    b"b",
    b"\x81",
    b"\x92",
    b"\x82\x01",
    b"P1\n",
    b"Q",
    b"\x95" + (2**62).to_bytes(8, "little"),
    b"\x8e" + (2**40).to_bytes(8, "little"),
    b"\x8d" + (2**20).to_bytes(8, "little"),
    b"X\xff\xff\xff\x7f",
    b"\x8a\x08" + b"\xff" * 8,
    b"\x8a\xff" + b"\x7f" * 255,
    b"\x8b" + (2**10).to_bytes(4, "little") + b"\x01" * 1024,
    b"L" + b"9" * 2000 + b"L\n",
    b"I99999\n",
    b"F1e999\n",
    b"\x8f",
    b"\x90",
    b"\x96\x01" + b"\0" * 7 + b"x",
    b"\x97",
    b"\x98",
    b"N",
    b"\x88",
    b"\x89",
    b"K\x07",
    b"J\xff\xff\xff\xff",
    b"G\x7f\xf8\0\0\0\0\0\0",
    b"C\x03<f4",
    _text("dtype") + _text("<f8"),
    _text("shape") + b"]K\x04K\x0ae",
    b".",
]


def _mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    kind = rng.randrange(8)
    at = rng.randrange(len(data) + 1)
    if kind == 0:  # a few bytes flipped
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if kind == 1:
        return data[:at]
    if kind == 2:
        return data[:at] + rng.randbytes(rng.randint(1, 8)) + data[at:]
    if kind == 3:
        return data[:at] + rng.choice(SNIPPETS) + data[at:]
    if kind == 4:  # a snippet over the original bytes
        snippet = rng.choice(SNIPPETS)
        return data[:at] + snippet + data[at + len(snippet) :]
    if kind == 5:
        return data[:at] + data[at + rng.randint(1, 64) :]
    if kind == 6:  # a piece repeated
        end = min(len(data), at + rng.randint(1, 200))
        return data[:end] + data[at:end] * rng.randint(1, 3) + data[end:]
    other = rng.choice(others)
    return data[:at] + other[rng.randrange(len(other)) :]


def _structural(rng: random.Random, payload: dict) -> bytes:
    """The valid payload with one field replaced: exercises the checks after the scan."""
    replacements = [
        None,
        -1,
        2**70,
        1.5,
        float("nan"),
        True,
        "x" * rng.randint(0, 300),
        EVIL_TEXT,
        b"\0" * rng.randint(0, 64),
        [],
        {},
        [[[[1]]]],
        {"dtype": "<f4", "shape": [3], "data": b"\0" * 12},
        {"dtype": "<f4", "shape": [-3], "data": b""},
        {"dtype": "|O", "shape": [1], "data": b"A" * 8},
        {"loss": 0.5},
        (1, 2),
    ]
    node = payload
    path = []
    while isinstance(node, dict) and node and (not path or rng.random() < 0.7):
        key = rng.choice(list(node))
        path.append(key)
        if not isinstance(node[key], dict):
            break
        node = node[key]
    parent = payload
    for key in path[:-1]:
        parent = parent[key]
    action = rng.randrange(4)
    if action == 0:
        del parent[path[-1]]
    elif action == 1:
        parent[rng.choice(["extra", EVIL_TEXT, 7])] = rng.choice(replacements)
    else:
        parent[path[-1]] = rng.choice(replacements)
    return pickle.dumps(payload, protocol=rng.choice([2, 4, 4, 5]))


def _random_stream(rng: random.Random) -> bytes:
    """Opcodes drawn at random, each with an argument of the right form."""
    out = [b"\x80\x04"] if rng.random() < 0.8 else []
    for _ in range(rng.randint(1, 40)):
        op = rng.choice(pickletools.opcodes)
        out.append(op.code.encode("latin-1") + _random_arg(rng, op))
    if rng.random() < 0.8:
        out.append(b".")
    return b"".join(out)


def _random_arg(rng: random.Random, op: pickletools.OpcodeInfo) -> bytes:
    if op.arg is None:
        return b""
    n = op.arg.n
    if n > 0:
        return bytes([rng.choice([0, 1, 2, 255, rng.randrange(256)]) for _ in range(n)])
    if n == pickletools.UP_TO_NEWLINE:
        pairs = op.name in ("GLOBAL", "INST")
        line = rng.choice([b"0", b"12", b"-3", b"1.5", b"'a'", b"numpy", b"\x1b", b"x" * 1100])
        return line + b"\n" + (rng.choice([b"ndarray\n", b"system\n"]) if pairs else b"")
    size = rng.choice([0, 1, 3, 8, 255, 2**31])
    body = bytes(rng.randrange(256) for _ in range(min(size, 16)))
    width = {
        pickletools.TAKEN_FROM_ARGUMENT1: 1,
        pickletools.TAKEN_FROM_ARGUMENT4: 4,
        pickletools.TAKEN_FROM_ARGUMENT4U: 4,
        pickletools.TAKEN_FROM_ARGUMENT8U: 8,
    }[n]
    return (size % 256**width).to_bytes(width, "little") + body


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("valid")
    out = []
    for i, arch in enumerate(("atten", "linear")):
        history = {"loss": np.linspace(1, 0, 3), "accuracy": np.ones(3, np.float32)}
        for extras in ({}, {"history": history, "metrics": {"train": {"loss": 0.5}}}):
            path = checkpoint.save(
                folder / f"{arch}{len(extras)}.pkl",
                _params(arch, i),
                config=TrainConfig(arch=arch, epochs=3),
                **extras,
            )
            out.append(path.read_bytes())
    return out


@pytest.mark.subprocess
@pytest.mark.slow
def test_fuzzed_files_load_or_raise_checkpoint_error(tmp_path, valid_files):
    rng = random.Random(FUZZ_SEED)
    inputs: list[bytes] = []
    for i in range(1200):
        base = valid_files[i % len(valid_files)]
        data = base
        for _ in range(rng.choice([1, 1, 2, 3])):
            data = _mutate(rng, data, valid_files)
        inputs.append(data)
    inputs += [_structural(rng, pickle.loads(rng.choice(valid_files))) for _ in range(300)]
    inputs += [_random_stream(rng) for _ in range(500)]
    paths = []
    for i, data in enumerate(inputs):
        paths.append(tmp_path / f"fuzz_{i:04d}.pkl")
        paths[-1].write_bytes(data)

    results = []
    for start in range(0, len(paths), FUZZ_BATCH):
        results += load_in_child(paths[start : start + FUZZ_BATCH], tmp_path)

    outcomes = {}
    for path, result in zip(paths, results):
        outcomes.setdefault(result["outcome"], []).append(path.name)
        assert result["outcome"] in ("ok", "CheckpointError"), (path, result)
        assert result["seconds"] < MAX_LOAD_SECONDS, (path, result)
        assert result["growth"] < MAX_GROWTH_BYTES, (path, result)
        if result["outcome"] == "CheckpointError":
            assert result["message"].startswith(f"{path}: ")
            assert_safe_message(result["message"])
    assert set(outcomes) == {"ok", "CheckpointError"}  # both reached: the fuzzing bites
    distinct = {r["message"].split(": ", 1)[1][:30] for r in results if r["message"]}
    assert len(distinct) > 30
