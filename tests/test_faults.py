"""Bad input and faults: exit codes, the one-line message, and the files left behind.

Most cases call the command functions in-process (the scripts are one-line wrappers
around them); the signal tests and one smoke test per script run real processes.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, call

from jax_iris import checkpoint, torch_reference
from jax_iris.cli import EXIT_INTERRUPTED, EXIT_USAGE
from jax_iris.commands import evaluate_command, train_command
from jax_iris.convert import convert_command
from jax_iris.models import init_params
from jax_iris.sweep_command import sweep_command
from jax_iris.train import TrainConfig

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SUBPROCESS_TIMEOUT = 240  # seconds; generous because the suite may share 2 cores


# ---------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def save_initial(path: Path, arch: str = "atten", seed: int = 0) -> Path:
    """A valid checkpoint of untrained params (no training needed)."""
    config = TrainConfig(arch=arch, epochs=3, seed=seed)
    history = {"loss": np.array([1.1, 1.0, 0.9], np.float32), "accuracy": np.ones(3, np.float32)}
    params = init_params(arch, jax.random.key(seed))
    return checkpoint.save(path, params, config=config, history=history)


def payload_of(path: Path) -> dict:
    """A checkpoint's raw dict, read with the plain (unsafe) pickle: only for files we wrote."""
    return pickle.loads(path.read_bytes())


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A folder with valid atten.pkl and linear.pkl (untrained params)."""
    folder = tmp_path_factory.mktemp("good")
    for arch in ("atten", "linear"):
        save_initial(folder / f"{arch}.pkl", arch)
    return folder


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- train.py usage errors


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--arch", "resnet"], ["--arch", "invalid choice", "resnet"]),
        (["--epochs", "0"], ["epochs must be a positive integer", "0"]),
        (["--epochs", "-5"], ["epochs must be a positive integer", "-5"]),
        (["--epochs", "ten"], ["--epochs", "invalid int value", "ten"]),
        (["--lr", "nan"], ["lr must be a finite number > 0", "nan"]),
        (["--lr", "inf"], ["lr must be a finite number > 0", "inf"]),
        (["--lr", "-0.1"], ["lr must be a finite number > 0"]),
        (["--weight-decay", "nan"], ["weight_decay must be a finite number"]),
        (["--log-every", "0"], ["log_every must be a positive integer"]),
        (["--seed", "-1"], ["seed must be an integer from 0"]),
        (["--head", "softmax"], ["head must be one of"]),
        (["--no-such-flag"], ["unrecognized arguments", "--no-such-flag"]),
    ],
)
def test_train_rejects_bad_options_in_one_line(workdir, capsys, argv, needles):
    code, out, err = call(train_command, argv, capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "train.py: error:", *needles)
    assert "epoch " not in out
    assert list(workdir.iterdir()) == []  # no checkpoints/ or runs/ created


def test_train_script_reports_bad_input_without_traceback(tmp_path):
    """The real process: exit status 2, one line, nothing created."""
    proc = subprocess.run(
        [sys.executable, SCRIPTS / "train.py", "--epochs", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == EXIT_USAGE
    assert_one_line_error(proc.stderr, "train.py: error:", "epochs must be a positive integer")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- unwritable folders


def _under_regular_file(root: Path) -> Path:
    blocker = root / "blocker"
    blocker.write_text("a regular file, not a folder\n")
    return blocker / "sub"


@pytest.mark.parametrize("flag", ["--checkpoint-dir", "--logdir"])
@pytest.mark.parametrize("where", ["under_file", "proc"])
def test_unwritable_folder_is_reported_before_training(workdir, capsys, flag, where):
    target = _under_regular_file(workdir) if where == "under_file" else Path("/proc/jax_iris_x")
    other = "--logdir" if flag == "--checkpoint-dir" else "--checkpoint-dir"
    argv = ["--epochs", "50", "--log-every", "10", flag, target, other, workdir / "other"]
    code, out, err = call(train_command, argv, capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "cannot write to", str(target), f"choose another {flag}")
    assert "epoch" not in out and "device" not in out  # failed before any training
    assert not (workdir / "other").exists()
    assert not target.exists()


def test_log_subfolder_taken_by_a_file_fails_cleanly(workdir, capsys):
    """``runs/atten`` is a regular file: the run must not end in a traceback."""
    (workdir / "runs").mkdir()
    (workdir / "runs" / "atten").write_text("in the way\n")
    argv = ["--epochs", "5", "--log-every", "5", "--checkpoint-dir", "ck", "--logdir", "runs"]
    code, out, err = call(train_command, argv, capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "runs/atten", "--logdir")
    assert "epoch" not in out  # found before training
    assert not (workdir / "ck").exists()
    assert (workdir / "runs" / "atten").read_text() == "in the way\n"


# ---------------------------------------------------------------- divergence


def test_divergence_is_an_error_and_keeps_the_previous_checkpoint(workdir, capsys, good):
    ckpt_dir = workdir / "ck"
    ckpt_dir.mkdir()
    for arch in ("atten", "linear"):
        (ckpt_dir / f"{arch}.pkl").write_bytes((good / f"{arch}.pkl").read_bytes())
    before = snapshot(ckpt_dir)
    argv = ["--arch", "both", "--lr", "1e30", "--epochs", "20", "--log-every", "10"]
    code, out, err = call(train_command, [*argv, "--checkpoint-dir", ckpt_dir], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "diverged", "smaller --lr", "Nothing was written")
    assert snapshot(ckpt_dir) == before  # untouched, no temp files
    assert not (workdir / "runs").exists()
    assert "saved" not in out
    assert checkpoint.load(ckpt_dir / "atten.pkl").config.lr == TrainConfig().lr


# ---------------------------------------------------------------- evaluate.py: bad files


def _truncated(good: Path, dest: Path) -> Path:
    data = (good / "atten.pkl").read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def _foreign_pickle(good: Path, dest: Path) -> Path:
    dest.write_bytes(pickle.dumps({"state_dict": {"w": np.zeros(3, np.float32)}}))
    return dest


def _zip_like_torch(good: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as z:  # torch.save's container format
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return dest


def _text(good: Path, dest: Path) -> Path:
    dest.write_text("epoch,loss\n1,0.5\n")
    return dest


def _empty(good: Path, dest: Path) -> Path:
    dest.write_bytes(b"")
    return dest


def _new_version(good: Path, dest: Path) -> Path:
    payload = payload_of(good / "atten.pkl")
    payload["version"] = 99
    dest.write_bytes(pickle.dumps(payload, protocol=4))
    return dest


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda g, d: d / "nope.pkl", ["no such checkpoint file"]),
        (lambda g, d: (d.mkdir(), d)[1], ["is a folder"]),
        (_truncated, ["truncated"]),
        (_empty, ["truncated"]),
        (_foreign_pickle, ["not a jax_iris checkpoint"]),
        (_zip_like_torch, []),
        (_text, []),
        (_new_version, ["version 99"]),
    ],
    ids=["missing", "folder", "truncated", "empty", "foreign", "zip", "text", "version"],
)
def test_evaluate_refuses_bad_files_in_one_line(tmp_path, capsys, good, make, needles):
    path = make(good, tmp_path / "bad.pkl")
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)
    code, out, err = call(evaluate_command, [path], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "evaluate.py: error:", str(path), *needles)
    assert out == ""


def test_evaluate_reads_the_good_files(capsys, good):
    code, out, err = call(evaluate_command, [good / "atten.pkl", good / "linear.pkl"], capsys)
    assert (code, err) == (0, "")
    assert "Atten_Model" in out and "Linear_Model" in out


def _rewrite(good: Path, dest: Path, edit) -> Path:
    payload = payload_of(good / "atten.pkl")
    edit(payload)
    dest.write_bytes(pickle.dumps(payload, protocol=4))
    return dest


def _relabel_as_linear(payload: dict) -> None:
    payload["arch"] = "linear"
    payload["config"]["arch"] = "linear"


def _tamper_shape(payload: dict) -> None:
    payload["params"]["layer_1/k/kernel"] = np.zeros((5, 10), np.float32)


def _config_disagrees(payload: dict) -> None:
    payload["config"]["arch"] = "linear"


def _int_params(payload: dict) -> None:
    payload["params"]["linear/bias"] = np.zeros(3, np.int64)


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (_relabel_as_linear, ["atten", "linear"]),
        (_tamper_shape, ["layer_1/k/kernel", "(5, 10)", "(4, 10)"]),
        (_config_disagrees, ["atten", "linear"]),
        (_int_params, ["linear/bias", "float32"]),
    ],
    ids=["other-arch", "shape", "config-arch", "int-dtype"],
)
def test_mismatched_params_are_refused_naming_the_mismatch(tmp_path, capsys, good, edit, needles):
    path = _rewrite(good, tmp_path / "tampered.pkl", edit)
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(path)
    for needle in needles:
        assert needle in str(info.value)
    code, _, err = call(evaluate_command, [path], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, *needles)


# ---------------------------------------------------------------- malicious pickles


class _Call:
    """Pickles as ``fn(*args)``: what a hostile file makes an unrestricted unpickler run."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args

    def __call__(self, *args):  # pickle insists the reduce target is callable
        raise AssertionError("never called while pickling")


def _touch_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _in_checkpoint(good: Path, evil, where: str = "metrics") -> bytes:
    """A real checkpoint with ``evil`` hidden in one field."""
    payload = payload_of(good / "atten.pkl")
    if where == "history":
        payload["history"]["loss"] = evil
    else:
        payload[where] = evil
    return pickle.dumps(payload, protocol=4)


def _os_system(good, marker, tmp):
    return _in_checkpoint(good, _Call(os.system, f"touch {marker}")), "system"


def _builtins_eval(good, marker, tmp):
    return _in_checkpoint(good, _Call(eval, _touch_code(marker))), "builtins.eval"


def _builtins_exec(good, marker, tmp):
    return _in_checkpoint(good, _Call(exec, _touch_code(marker)), "config"), "builtins.exec"


def _popen(good, marker, tmp):
    evil = _Call(subprocess.Popen, ["touch", str(marker)])
    return _in_checkpoint(good, evil, "params"), "subprocess.Popen"


def _fake_ndarray(good, marker, tmp):
    """A class named ``ndarray`` in another module, whose import has a side effect."""
    module = f"evil_{marker.stem}"
    (tmp / f"{module}.py").write_text(
        f"{_touch_code(marker)}\nclass ndarray:\n    pass\n", encoding="utf-8"
    )
    sys.path.insert(0, str(tmp))
    return f"c{module}\nndarray\n(tR.".encode(), f"{module}.ndarray"


def _numpy_load(good, marker, tmp):
    """numpy.load with allow_pickle=True on a planted .npy: a two-stage attack."""
    planted = tmp / "planted.npy"
    np.save(planted, np.array([_Call(os.system, f"touch {marker}")], dtype=object))
    return _in_checkpoint(good, _Call(np.load, str(planted), None, True)), "numpy.load"


def _numpy_frompyfunc(good, marker, tmp):
    ufunc = _Call(np.frompyfunc, os.system, 1, 1)
    return _in_checkpoint(good, _Call(ufunc, f"touch {marker}")), "numpy.frompyfunc"


def _numpy_testing_runstring(good, marker, tmp):
    from numpy.testing._private.utils import runstring

    evil = _Call(runstring, _touch_code(marker), {})
    return _in_checkpoint(good, evil), "runstring"


def _object_array(good, marker, tmp):
    """Allowed numpy reconstruct globals, an object dtype, and a payload inside."""
    evil = np.array([0.5, _Call(os.system, f"touch {marker}")], dtype=object)
    return _in_checkpoint(good, evil, "history"), "system"


MALICIOUS = [
    _os_system,
    _builtins_eval,
    _builtins_exec,
    _popen,
    _fake_ndarray,
    _numpy_load,
    _numpy_frompyfunc,
    _numpy_testing_runstring,
    _object_array,
]


@pytest.mark.parametrize("make", MALICIOUS, ids=lambda f: f.__name__.strip("_"))
def test_malicious_pickles_are_refused_and_run_nothing(tmp_path, capsys, good, make, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    marker = tmp_path / f"pwned_{make.__name__.strip('_')}"
    data, global_name = make(good, marker, tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)

    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(path)
    assert "refused" in str(info.value) and global_name in str(info.value)
    code, out, err = call(evaluate_command, [path], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "refused", global_name)
    assert not marker.exists()

    # Control: the same bytes through an unrestricted unpickler do run the payload,
    # so the refusal above is what kept the marker away.
    with contextlib.suppress(Exception):
        pickle.loads(data)
    deadline = time.monotonic() + 10  # a spawned `touch` may finish a moment later
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the control did not run the payload: the test proves nothing"


def test_object_array_of_harmless_values_is_not_a_history(tmp_path, good):
    """An object array needs no forbidden global; it must still not pass as a history."""
    path = tmp_path / "obj.pkl"
    path.write_bytes(_in_checkpoint(good, np.array(["1.0", None, 3], dtype=object), "history"))
    with pytest.raises(checkpoint.CheckpointError, match="history"):
        checkpoint.load(path)


def test_evaluate_script_refuses_a_malicious_file(tmp_path, good):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(_os_system(good, marker, tmp_path)[0])
    proc = subprocess.run(
        [sys.executable, SCRIPTS / "evaluate.py", path],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == EXIT_USAGE
    assert_one_line_error(proc.stderr, "evaluate.py: error:", "refused", "system")
    assert not marker.exists()


# ---------------------------------------------------------------- SIGKILL while saving

# A child that saves over an existing checkpoint and stops, at a chosen step of the
# save, until it is killed: os.fsync (temp file written, not yet in place) or
# os.replace (temp file complete, the atomic rename not yet done).
_KILLED_SAVER = """
import os, sys, time
import jax
from jax_iris import checkpoint

path, step = sys.argv[1], sys.argv[2]
old = checkpoint.load(path)
new_params = jax.tree_util.tree_map(lambda a: a + 1.0, old.params)
real = getattr(os, step)

def pause(*args):
    print("paused", flush=True)
    time.sleep(600)
    return real(*args)

setattr(os, step, pause)
checkpoint.save(path, new_params, config=old.config, history=old.history)
print("saved", flush=True)
"""


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_sigkill_while_saving_keeps_the_previous_checkpoint(tmp_path, good, step):
    path = tmp_path / "atten.pkl"
    path.write_bytes((good / "atten.pkl").read_bytes())
    before = path.read_bytes()
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVER, path, step],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "paused\n", child.stderr.read()
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=SUBPROCESS_TIMEOUT) == -signal.SIGKILL
    finally:
        child.kill()
        child.communicate()

    assert path.read_bytes() == before
    assert checkpoint.load(path).arch == "atten"
    # The killed process cannot remove its temp file: it stays, hidden and not named *.pkl,
    # so nothing that looks for checkpoints picks it up, and the next save is unaffected.
    stale = sorted(p.name for p in tmp_path.iterdir() if p.name != "atten.pkl")
    assert len(stale) == 1 and stale[0].startswith(".atten.pkl.") and stale[0].endswith(".tmp")
    assert [p.name for p in tmp_path.glob("*.pkl")] == ["atten.pkl"]
    old = checkpoint.load(path)
    checkpoint.save(path, old.params, config=old.config, history=old.history)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "atten.pkl") == stale


# ---------------------------------------------------------------- Ctrl-C during training


def test_ctrl_c_during_training_exits_130_and_writes_nothing(tmp_path, good):
    ckpt_dir = tmp_path / "ck"
    ckpt_dir.mkdir()
    (ckpt_dir / "atten.pkl").write_bytes((good / "atten.pkl").read_bytes())
    before = snapshot(ckpt_dir)
    # A run far too long to finish, in short compiled chunks so that the interrupt is
    # seen between two chunks (Python handles signals only between XLA calls).
    argv = ["--epochs", "10000000", "--log-every", "50", "--checkpoint-dir", ckpt_dir]
    child = subprocess.Popen(
        [sys.executable, SCRIPTS / "train.py", *argv, "--logdir", tmp_path / "runs"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in child.stdout:
            if " epoch " in line:
                break
        else:
            pytest.fail(f"no progress line; stderr: {child.stderr.read()}")
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        child.kill()
    assert child.returncode == EXIT_INTERRUPTED
    assert_one_line_error(err, "train.py: interrupted")
    assert snapshot(ckpt_dir) == before
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- sweep.py


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--seeds", "0"], ["--seeds must be a positive integer"]),
        (["--chunk-size", "0"], ["--chunk-size must be a positive integer"]),
        (["--epochs", "0"], ["epochs must be a positive integer"]),
        (["--lr", "nan"], ["lr must be a finite number > 0"]),
        (["--arch", "resnet"], ["--arch", "invalid choice", "resnet"]),
    ],
)
def test_sweep_rejects_bad_options_in_one_line(workdir, capsys, argv, needles):
    code, out, err = call(sweep_command, [*argv, "--out", workdir / "res"], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "sweep.py: error:", *needles)
    assert out == "" and list(workdir.iterdir()) == []


def test_sweep_unwritable_out_is_reported_before_training(workdir, capsys):
    target = _under_regular_file(workdir)
    code, out, err = call(sweep_command, ["--seeds", "2", "--out", target], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "not a folder", "--out")
    assert "devices" not in out and "nets" not in out


# ---------------------------------------------------------------- convert.py


@pytest.fixture(scope="module")
def atten_pth(tmp_path_factory) -> Path:
    """A genuine torch state_dict file of the attention net."""
    net = torch_reference.build("atten")
    path = tmp_path_factory.mktemp("pth") / "atten.pth"
    torch_reference.save_state_dict_file(path, torch_reference.numpy_state_dict(net))
    return path


def _convert(argv, capsys):
    return call(convert_command, argv, capsys)


def test_convert_refuses_unknown_suffixes_and_missing_input(tmp_path, capsys):
    code, _, err = _convert([tmp_path / "a.txt", tmp_path / "b.pkl"], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "convert.py: error:", "a.txt", ".pth")
    code, _, err = _convert([tmp_path / "missing.pth", tmp_path / "b.pkl"], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "missing.pth", "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_convert_never_overwrites_without_force(tmp_path, capsys, good, atten_pth):
    target = tmp_path / "atten.pkl"
    target.write_bytes(b"precious")
    code, _, err = _convert([atten_pth, target], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, str(target), "--force")
    assert target.read_bytes() == b"precious"


def test_convert_names_the_mismatch_of_a_forced_arch(tmp_path, capsys, atten_pth):
    target = tmp_path / "out.pkl"
    code, _, err = _convert([atten_pth, target, "--arch", "linear"], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "linear", "layer_1.k.weight")
    assert not target.exists()


def test_convert_refuses_a_truncated_pth(tmp_path, capsys, atten_pth):
    data = atten_pth.read_bytes()
    source = tmp_path / "cut.pth"
    source.write_bytes(data[: len(data) // 2])
    code, _, err = _convert([source, tmp_path / "out.pkl"], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "cut.pth", "not a readable PyTorch file")
    assert not (tmp_path / "out.pkl").exists()


def test_convert_refuses_a_malicious_pkl(tmp_path, capsys, good):
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.pkl"
    source.write_bytes(_os_system(good, marker, tmp_path)[0])
    code, _, err = _convert([source, tmp_path / "out.pth"], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "refused", "system")
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


def test_convert_refuses_a_malicious_pth(tmp_path, capsys):
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.pth"
    torch.save({"layer_1.weight": _Call(os.system, f"touch {marker}")}, source)
    code, _, err = _convert([source, tmp_path / "out.pkl"], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "evil.pth", "refused")
    assert not marker.exists() and not (tmp_path / "out.pkl").exists()
    torch.load(source, weights_only=False)  # control: an unrestricted load runs it
    assert marker.exists()
