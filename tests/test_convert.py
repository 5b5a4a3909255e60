"""state_dict <-> params conversion, and the convert command in both directions.

(Its refusals of bad input are in test_cli; a torn write is in test_faults.)
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from helpers import SHORT_EPOCHS, call

from jax_iris.cli import convert as convert_command
from jax_iris.config import TrainConfig
from jax_iris.data import load_split
from jax_iris.io import checkpoint
from jax_iris.models import flatten_params, get_model, init_params, unflatten_params
from jax_iris.pytorch import reference as tr
from jax_iris.pytorch.compat import (
    infer_arch,
    params_from_state_dict,
    state_dict_from_params,
    torch_shapes,
)
from jax_iris.registry import blog_archs
from jax_iris.train import evaluate, fit, metrics_dict

ARCHS = blog_archs()
# Same weights, float32 forward passes in two libraries: a few ulps of values in (0, 1).
OUTPUT_ATOL = 1e-6
# A converted checkpoint evaluates the same weights on the same rows: losses agree to
# float32 rounding of a mean of 15-120 terms.
TABLE_LOSS_ATOL = 1e-6
TORCH_EPOCHS = 100


pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]


def all_rows() -> np.ndarray:
    return np.concatenate([d.x for d in load_split()])


# compat ---------------------------------------------------------------------------------


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
    flat, flat_back = flatten_params(params), flatten_params(back)
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
    flat = flatten_params(init_params("linear", jax.random.key(0)))
    del flat["layer_3/bias"]
    flat["layer_1/kernel"] = flat["layer_1/kernel"].T
    flat["layer_4/kernel"] = np.zeros((20, 3), np.float32)
    with pytest.raises(ValueError) as info:
        state_dict_from_params("linear", unflatten_params(flat))
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
        config = TrainConfig(arch=arch, epochs=SHORT_EPOCHS, log_every=SHORT_EPOCHS, seed=3)
        result = fit(config)
        paths[arch] = checkpoint.save(folder / f"{arch}.pkl", result.params, config=config)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_jax_checkpoint_to_pth_gives_the_same_outputs(jax_checkpoints, tmp_path, capsys, arch):
    out = tmp_path / f"{arch}.pth"
    code, stdout, err = call(convert_command.main, [jax_checkpoints[arch], out], capsys)
    assert (code, err) == (0, "")
    assert f"wrote {out} ({arch} net state_dict" in stdout

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
@pytest.mark.slow
def test_pth_to_pkl_evaluates_to_the_same_table(tmp_path, capsys, arch):
    start = tr.numpy_state_dict(tr.build(arch, seed=0))
    torch_run = tr.train_from(arch, start, epochs=TORCH_EPOCHS)
    source, out = tmp_path / "trained.pth", tmp_path / "trained.pkl"
    torch.save({k: torch.from_numpy(v) for k, v in torch_run.state_dict.items()}, source)

    code, stdout, err = call(convert_command.main, [source, out], capsys)
    assert (code, err) == (0, "")
    assert "Accuracy Train_Data" in stdout and f"wrote {out} ({arch} net, from {source})" in stdout

    loaded = checkpoint.load(out)
    assert loaded.arch == arch  # inferred from the keys
    assert loaded.config == TrainConfig(arch=arch)
    table = metrics_dict(evaluate(loaded.config, loaded.params))
    assert loaded.metrics == table
    for split, row in torch_run.table.items():
        n = len(getattr(load_split(), split).y)
        assert round(table[split]["accuracy"] * n) == round(row["accuracy"] * n), split
        assert abs(table[split]["loss"] - row["loss"]) <= TABLE_LOSS_ATOL, split


def test_arch_flag_and_force_replace_an_existing_file(tmp_path, capsys):
    source, out = tmp_path / "linear.pt", tmp_path / "linear.pkl"
    torch.save(tr.build("linear", seed=1).state_dict(), source)
    out.write_bytes(b"old")
    outcome = call(convert_command.main, [source, out, "--arch", "linear", "--force"], capsys)
    assert (outcome.code, outcome.err) == (0, "")
    loaded = checkpoint.load(out)
    assert loaded.arch == "linear"
    expected = params_from_state_dict("linear", tr.numpy_state_dict(tr.build("linear", seed=1)))
    for name, value in flatten_params(expected).items():
        np.testing.assert_array_equal(flatten_params(loaded.params)[name], value)
