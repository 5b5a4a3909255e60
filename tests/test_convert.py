"""state_dict <-> params conversion, and scripts/convert.py in both directions and on bad input."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from jax_iris import checkpoint
from jax_iris import torch_reference as tr
from jax_iris.convert import convert_command
from jax_iris.data import load_split
from jax_iris.models import ARCHS, get_model, init_params
from jax_iris.torch_compat import (
    infer_arch,
    params_from_state_dict,
    state_dict_from_params,
    torch_shapes,
)
from jax_iris.train import TrainConfig, evaluate, fit

REPO = Path(__file__).resolve().parents[1]
# Same weights, float32 forward passes in two libraries: a few ulps of values in (0, 1).
OUTPUT_ATOL = 1e-6
# A converted checkpoint evaluates the same weights on the same rows: losses agree to
# float32 rounding of a mean of 15-120 terms.
TABLE_LOSS_ATOL = 1e-6
JAX_EPOCHS = 50  # enough to move every weight away from its initial value


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def all_rows() -> np.ndarray:
    return np.concatenate([d.x for d in load_split()])


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = convert_command(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


# torch_compat -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_torch_shapes_are_the_reference_state_dict(arch):
    state_dict = tr.build(arch, seed=0).state_dict()
    assert list(torch_shapes(arch).items()) == [(k, tuple(v.shape)) for k, v in state_dict.items()]
    assert infer_arch(state_dict) == arch
    assert infer_arch([*state_dict, "extra"]) is None


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact_and_keeps_dtype(arch, dtype):
    params = jax.tree_util.tree_map(
        lambda a: np.asarray(a, dtype), init_params(arch, jax.random.key(7))
    )
    state_dict = state_dict_from_params(arch, params)
    assert all(v.dtype == dtype for v in state_dict.values())
    back = params_from_state_dict(arch, state_dict)
    flat, flat_back = checkpoint.flatten_params(params), checkpoint.flatten_params(back)
    assert flat.keys() == flat_back.keys()
    for name in flat:
        np.testing.assert_array_equal(flat_back[name], flat[name])
        assert flat_back[name].dtype == dtype


def test_weight_is_the_transposed_kernel():
    state_dict = tr.numpy_state_dict(tr.build("linear", seed=0))
    params = params_from_state_dict(
        "linear", {k: torch.from_numpy(v) for k, v in state_dict.items()}
    )
    np.testing.assert_array_equal(
        params["params"]["layer_2"]["kernel"], state_dict["layer_2.weight"].T
    )
    assert params["params"]["layer_2"]["kernel"].shape == (10, 20)


def test_params_from_state_dict_names_every_problem():
    state_dict = tr.numpy_state_dict(tr.build("atten", seed=0))
    del state_dict["linear.bias"]
    state_dict["layer_2.k.weight"] = state_dict["layer_2.k.weight"].T
    state_dict["layer_1.q.bias"] = state_dict["layer_1.q.bias"].astype(np.int64)
    state_dict["layer_3.weight"] = np.zeros((3, 20), np.float32)
    with pytest.raises(ValueError) as info:
        params_from_state_dict("atten", state_dict)
    message = str(info.value)
    assert "missing linear.bias" in message
    assert "unexpected layer_3.weight" in message
    assert "layer_2.k.weight has shape (10, 20), expected (20, 10)" in message
    assert "layer_1.q.bias has dtype int64" in message


def test_state_dict_from_params_names_every_problem():
    flat = checkpoint.flatten_params(init_params("linear", jax.random.key(0)))
    del flat["layer_3/bias"]
    flat["layer_1/kernel"] = flat["layer_1/kernel"].T
    flat["layer_4/kernel"] = np.zeros((20, 3), np.float32)
    with pytest.raises(ValueError) as info:
        state_dict_from_params("linear", checkpoint.unflatten_params(flat))
    message = str(info.value)
    assert "missing layer_3/bias" in message
    assert "unexpected layer_4/kernel" in message
    assert "layer_1/kernel has shape (10, 4), expected (4, 10)" in message


# convert.py, both directions --------------------------------------------------------------


@pytest.fixture(scope="module")
def jax_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint per arch, trained in JAX from jax.random.key(3)."""
    folder = tmp_path_factory.mktemp("jax_checkpoints")
    paths = {}
    for arch in ARCHS:
        config = TrainConfig(arch=arch, epochs=JAX_EPOCHS, log_every=JAX_EPOCHS, seed=3)
        result = fit(config)
        paths[arch] = checkpoint.save(folder / f"{arch}.pkl", result.params, config=config)
    return paths


@pytest.mark.parametrize("arch", ARCHS)
def test_jax_checkpoint_to_pth_gives_the_same_outputs(jax_checkpoints, tmp_path, capsys, arch):
    out = tmp_path / f"{arch}.pth"
    code, stdout, _ = run([str(jax_checkpoints[arch]), str(out)], capsys)
    assert code == 0
    assert str(out) in stdout

    state_dict = torch.load(out, weights_only=True)
    net = tr.build(arch)
    net.load_state_dict(state_dict, strict=True)
    x = all_rows()
    with torch.no_grad():
        torch_out = net(torch.from_numpy(x)).numpy()
    params = checkpoint.load(jax_checkpoints[arch]).params
    jax_out = np.asarray(get_model(arch).apply(params, x))
    initial = np.asarray(get_model(arch).apply(init_params(arch, jax.random.key(3)), x))
    assert np.abs(jax_out - initial).max() > 1e-3  # the checkpoint really was trained
    np.testing.assert_allclose(torch_out, jax_out, rtol=0, atol=OUTPUT_ATOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_pth_to_pkl_evaluates_to_the_same_table(tmp_path, capsys, arch):
    torch_run = tr.train_from(arch, tr.numpy_state_dict(tr.build(arch, seed=0)), epochs=100)
    source, out = tmp_path / "trained.pth", tmp_path / "trained.pkl"
    torch.save({k: torch.from_numpy(v) for k, v in torch_run.state_dict.items()}, source)

    code, stdout, _ = run([str(source), str(out)], capsys)
    assert code == 0
    assert "Accuracy" in stdout

    loaded = checkpoint.load(out)
    assert loaded.arch == arch  # inferred from the keys
    assert loaded.config == TrainConfig(arch=arch)
    table = evaluate(arch, loaded.params, load_split())
    assert loaded.metrics == table
    for split, row in torch_run.table.items():
        n = len(getattr(load_split(), split).y)
        assert round(table[split]["accuracy"] * n) == round(row["accuracy"] * n), split
        assert abs(table[split]["loss"] - row["loss"]) <= TABLE_LOSS_ATOL, split


def test_arch_flag_and_force(tmp_path, capsys):
    source, out = tmp_path / "linear.pth", tmp_path / "linear.pkl"
    torch.save(tr.build("linear", seed=1).state_dict(), source)
    out.write_bytes(b"old")
    assert run([str(source), str(out), "--arch", "linear", "--force"], capsys)[0] == 0
    assert checkpoint.load(out).arch == "linear"

    code, _, err = run([str(source), str(tmp_path / "x.pkl"), "--arch", "atten"], capsys)
    assert code == 2
    assert "does not fit the atten net" in err
    assert "missing layer_1.k.weight" in err and "unexpected layer_3.weight" in err


# bad input ---------------------------------------------------------------------------------


def _write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return path


def _bad_keys_state_dict():
    state_dict = tr.build("atten", seed=0).state_dict()
    del state_dict["linear.bias"]
    state_dict["extra.weight"] = torch.zeros(1)
    return state_dict


def _make(tmp_path: Path, case: str) -> tuple[list[str], Path, str]:
    """(argv, OUT, a fragment the error must contain) for each bad-input case."""
    good_pth = _write(tmp_path / "good.pth", tr.build("atten", seed=0).state_dict())
    pkl_out = tmp_path / "out.pkl"
    if case == "missing input":
        return [str(tmp_path / "nope.pth"), str(pkl_out)], pkl_out, "does not exist"
    if case == "input is a folder":
        (tmp_path / "folder.pth").mkdir()
        return [str(tmp_path / "folder.pth"), str(pkl_out)], pkl_out, "is not a file"
    if case == "text as pth":
        source = _write(tmp_path / "text.pth", b"not a torch file\n")
        return [str(source), str(pkl_out)], pkl_out, "not a readable PyTorch file"
    if case == "whole module pth":
        source = _write(tmp_path / "module.pth", tr.build("atten", seed=0))
        fragment = "pickles jax_iris.torch_reference.AttentionNet, not only tensors"
        return [str(source), str(pkl_out)], pkl_out, fragment
    if case == "list pth":
        source = _write(tmp_path / "list.pth", [torch.zeros(2)])
        return [str(source), str(pkl_out)], pkl_out, "not a state_dict"
    if case == "foreign keys":
        source = _write(tmp_path / "other.pth", {"fc.weight": torch.zeros(2, 2)})
        return [str(source), str(pkl_out)], pkl_out, "belong to the blog's nets"
    if case == "wrong keys":
        source = _write(tmp_path / "bad.pth", _bad_keys_state_dict())
        return [str(source), str(pkl_out)], pkl_out, "missing linear.bias; unexpected extra.weight"
    if case == "wrong shape":
        state_dict = tr.build("linear", seed=0).state_dict()
        state_dict["layer_3.weight"] = torch.zeros(4, 20)
        source = _write(tmp_path / "shape.pth", state_dict)
        return [str(source), str(pkl_out)], pkl_out, "layer_3.weight has shape (4, 20)"
    if case == "not a checkpoint pkl":
        source = _write(tmp_path / "x.pkl", pickle.dumps({"hello": 1}))
        out = tmp_path / "out.pth"
        return [str(source), str(out)], out, "not a jax_iris checkpoint"
    if case == "truncated pkl":
        params = init_params("atten", jax.random.key(0))
        full = checkpoint.save(tmp_path / "full.pkl", params, config=TrainConfig())
        source = _write(tmp_path / "cut.pkl", full.read_bytes()[:200])
        out = tmp_path / "out.pth"
        return [str(source), str(out)], out, "truncated"
    if case == "same suffixes":
        out = tmp_path / "out.pth"
        return [str(good_pth), str(out)], out, "give a .pth/.pt and a .pkl"
    if case == "arch with pkl":
        params = init_params("atten", jax.random.key(0))
        source = checkpoint.save(tmp_path / "a.pkl", params, config=TrainConfig())
        out = tmp_path / "out.pth"
        return [str(source), str(out), "--arch", "atten"], out, "--arch applies to a .pth"
    if case == "output folder missing":
        out = tmp_path / "no" / "such" / "out.pkl"
        return [str(good_pth), str(out)], out, "is not an existing folder"
    if case == "output parent is a file":
        out = good_pth / "out.pkl"
        return [str(good_pth), str(out)], out, "is not an existing folder"
    if case == "output is a folder":
        out = tmp_path / "dir.pkl"
        out.mkdir()
        return [str(good_pth), str(out)], out, "is a folder"
    raise AssertionError(case)


BAD_CASES = [
    "missing input",
    "input is a folder",
    "text as pth",
    "whole module pth",
    "list pth",
    "foreign keys",
    "wrong keys",
    "wrong shape",
    "not a checkpoint pkl",
    "truncated pkl",
    "same suffixes",
    "arch with pkl",
    "output folder missing",
    "output parent is a file",
    "output is a folder",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    argv, out, fragment = _make(tmp_path, case)
    out_existed = out.exists()
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("convert.py: error: "), err
    assert fragment in err
    assert "Traceback" not in err
    assert out.exists() == out_existed  # nothing written (a folder OUT stays a folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary left behind


def test_existing_output_is_kept(tmp_path, capsys):
    source = _write(tmp_path / "good.pth", tr.build("atten", seed=0).state_dict())
    out = tmp_path / "out.pkl"
    out.write_bytes(b"precious")
    code, _, err = run([str(source), str(out)], capsys)
    assert code == 2 and "exists; pass --force" in err
    assert out.read_bytes() == b"precious"


def test_failed_pth_write_leaves_nothing(jax_checkpoints, tmp_path, capsys, monkeypatch):
    def torn_save(obj, f):
        f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    out = tmp_path / "out.pth"
    code, _, err = run([str(jax_checkpoints["atten"]), str(out)], capsys)
    assert code == 2
    assert "No space left on device" in err
    assert list(tmp_path.iterdir()) == []


def test_usage_error_from_argparse_is_one_line(capsys):
    code, _, err = run([], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "required" in err


def test_script_reports_a_missing_file_without_traceback(tmp_path):
    out = tmp_path / "out.pkl"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "convert.py"),
            str(tmp_path / "nope.pth"),
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
