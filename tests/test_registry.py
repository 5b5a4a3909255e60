"""The arch and head registries: a third net, registered here, goes wherever a net can go.

``TinyNet`` is defined in this file and registered by the ``tiny`` fixture only; no
library module is edited to add it. It then trains (``fit``), sweeps (``train_seeds``),
saves and loads (``checkpoint``), evaluates, and runs through the train and evaluate
commands, exactly as the blog's two nets do.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from helpers import assert_usage_error, call, leaves, parse_table

from jax_iris import registry
from jax_iris.cli import convert as convert_command
from jax_iris.cli import evaluate as evaluate_command
from jax_iris.cli import train as train_command
from jax_iris.config import ConfigError, TrainConfig
from jax_iris.io import checkpoint
from jax_iris.models import TorchDense, apply_head, get_model, identity, param_shapes
from jax_iris.sweep import train_seeds
from jax_iris.train import evaluate, fit, metrics_dict

EPOCHS = 40
LR = 0.05  # one dense layer moves slowly at the blog's 0.005
SWEEP_VS_FIT_ATOL = 1e-6  # as in test_sweep: batched matmuls sum in another order


class TinyNet(nn.Module):
    """One torch-style dense layer, 4 -> 3, then the head: multinomial logistic regression."""

    head: str = "sigmoid"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return apply_head(self.head, TorchDense(3, name="layer_1")(x))


@pytest.fixture(scope="module")
def tiny():
    spec = registry.register_arch("tiny", "Tiny_Model", TinyNet, description="dense 4 -> 3")
    yield spec
    registry.unregister_arch("tiny")


@pytest.fixture(scope="module")
def tiny_config(tiny) -> TrainConfig:
    return TrainConfig(arch="tiny", epochs=EPOCHS, log_every=EPOCHS, lr=LR)


@pytest.fixture(scope="module")
def tiny_fit(tiny_config):
    return fit(tiny_config)


def test_a_registered_arch_is_listed_and_labelled(tiny):
    assert registry.arch_spec("tiny") is tiny
    assert registry.label("tiny") == "Tiny_Model"
    assert param_shapes("tiny") == {"layer_1/kernel": (4, 3), "layer_1/bias": (3,)}
    assert isinstance(get_model("tiny", "logits"), TinyNet)
    assert TrainConfig(arch="tiny").arch == "tiny"
    # Not one of the blog's: "both" still means the blog's pair.
    assert registry.blog_archs() == ("atten", "linear")
    assert registry.expand_archs(["tiny", "both", "tiny"]) == ("tiny", "atten", "linear")
    assert train_command.parser().parse_args(["--arch", "tiny"]).arch == ["tiny"]


@pytest.mark.slow
def test_a_registered_arch_trains_sweeps_saves_and_evaluates(tiny_config, tiny_fit, tmp_path):
    history = tiny_fit.history
    assert history.loss.shape == (EPOCHS,)
    assert history.loss[-1] < history.loss[0] - 0.05

    sweep = train_seeds(tiny_config, [0, 1], params=True, history=True)
    for fitted, swept in zip(leaves(tiny_fit.params), leaves(sweep.params)):
        np.testing.assert_allclose(swept[0], fitted, rtol=0, atol=SWEEP_VS_FIT_ATOL)
    np.testing.assert_array_equal(sweep.history.accuracy[0], history.accuracy)
    assert not np.allclose(sweep.history.loss[1], history.loss)  # seed 1 is another net

    path = checkpoint.save(
        tmp_path / "tiny.pkl",
        tiny_fit.params,
        config=tiny_config,
        metrics=metrics_dict(tiny_fit.final),
        history=history._asdict(),
    )
    loaded = checkpoint.load(path)
    assert (loaded.arch, loaded.config) == ("tiny", tiny_config)
    for saved, original in zip(leaves(loaded.params), leaves(tiny_fit.params)):
        assert saved.tobytes() == original.tobytes()
    assert evaluate(loaded.config, loaded.params) == tiny_fit.final


@pytest.mark.slow
def test_a_registered_arch_runs_through_the_commands(tiny, tmp_path, capsys):
    argv = ["--arch", "tiny", "--epochs", EPOCHS, "--log-every", EPOCHS, "--lr", LR]
    argv += ["--checkpoint-dir", tmp_path / "ck", "--logdir", tmp_path / "runs"]
    trained = call(train_command.main, argv, capsys)
    assert trained.code == 0, trained.err
    assert f"  tiny  epoch {EPOCHS}/{EPOCHS}" in trained.out
    assert "Tiny_Model" in trained.out
    assert len(list((tmp_path / "runs" / "tiny").glob("*/events.out.tfevents.*"))) == 1

    evaluated = call(evaluate_command.main, [tmp_path / "ck" / "tiny.pkl"], capsys)
    assert (evaluated.code, evaluated.err) == (0, "")
    assert "Tiny_Model" in evaluated.out
    table = parse_table(evaluated.out)
    assert len(table) == 6 and table == parse_table(trained.out)


def test_convert_refuses_a_net_without_a_torch_restatement(tiny, tmp_path, capsys):
    source = checkpoint.save(
        tmp_path / "tiny.pkl",
        {
            "params": {
                "layer_1": {"kernel": np.zeros((4, 3), np.float32), "bias": np.zeros(3, np.float32)}
            }
        },
        config=TrainConfig(arch="tiny"),
    )
    outcome = call(convert_command.main, [source, tmp_path / "tiny.pth"], capsys)
    assert_usage_error(outcome, "convert.py", "tiny", "no PyTorch restatement")
    assert not (tmp_path / "tiny.pth").exists()


def test_names_taken_or_reserved_are_refused(tiny):
    with pytest.raises(ValueError, match="'tiny' is already registered"):
        registry.register_arch("tiny", "Again", TinyNet)
    for name in ("both", "my-net", ""):
        with pytest.raises(ValueError, match="must be an identifier other than 'both'"):
            registry.register_arch(name, "Bad", TinyNet)
    with pytest.raises(ValueError, match="head 'sigmoid' is already registered"):
        registry.register_head("sigmoid", identity)
    with pytest.raises(ValueError, match="unknown arch 'nope': choose one of atten, linear, tiny"):
        registry.arch_spec("nope")
    assert registry.resolve("jax_iris.models:identity") is identity
    assert registry.resolve(TinyNet) is TinyNet


def test_an_unregistered_arch_is_refused_everywhere():
    registry.register_arch("gone", "Gone_Model", TinyNet)
    registry.unregister_arch("gone")
    assert "gone" not in registry.ARCHS
    assert registry.label("gone") == "gone"  # an unknown name labels itself
    with pytest.raises(ConfigError) as info:
        TrainConfig(arch="gone")
    assert info.value.field == "arch"
    with pytest.raises(ValueError, match="unknown arch 'gone'"):
        get_model("gone")
