"""TrainConfig and SweepConfig: every field validated, bounds inclusive, rates float32-sized,
errors naming their field (that none of it imports jax: test_cli.test_imports_no_jax)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jax_iris.config import (
    FLOAT32_MAX,
    FLOAT32_TINY,
    MAX_CHUNK,
    MAX_EPOCHS,
    MAX_NETS,
    MAX_SEED,
    ConfigError,
    SweepConfig,
    TrainConfig,
)

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("arch", "mlp", "must be one of atten, linear, got 'mlp'"),
        ("arch", None, "must be one of"),
        ("head", "tanh", "must be one of sigmoid, logits, got 'tanh'"),
        ("epochs", 0, "must be an integer from 1 to 10,000,000, got 0"),
        ("epochs", -5, "got -5"),
        ("epochs", 2.5, "must be an integer"),
        ("epochs", True, "must be an integer"),  # a bool is not a count
        ("epochs", "10", "must be an integer"),
        ("epochs", MAX_EPOCHS + 1, "from 1 to 10,000,000"),
        ("log_every", 0, "must be an integer from 1"),
        ("seed", -1, "must be an integer from 0 to 4,294,967,295"),
        ("seed", 2**32, "got 4294967296"),
        ("split_seed", 1.0, "must be an integer"),
        ("lr", NAN, "must be a number > 0 that float32 can hold"),
        ("lr", INF, "> 0 that float32 can hold"),
        ("lr", 0.0, "> 0"),
        ("lr", -0.1, "> 0"),
        ("lr", 1e39, "(up to 3.4e38)"),  # finite in Python, infinite in float32
        ("lr", 1e-46, "> 0"),  # positive in Python, 0 in float32
        ("lr", False, "must be a number"),
        ("weight_decay", -1e-3, "must be a number >= 0"),
        ("weight_decay", NAN, ">= 0"),
        ("weight_decay", 3.5e38, "(up to 3.4e38)"),
    ],
)
def test_train_config_refuses_naming_the_field(field, value, problem):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field} ")
    assert problem in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "changes",
    [
        {"epochs": 1, "log_every": 1},
        {"epochs": MAX_EPOCHS, "log_every": MAX_EPOCHS},
        {"seed": MAX_SEED, "split_seed": 0},
        {"seed": np.int64(7), "epochs": np.int32(3)},  # numpy integers are integers
        {"lr": FLOAT32_MAX, "weight_decay": 0.0},
        {"lr": FLOAT32_TINY, "weight_decay": FLOAT32_MAX},
        {"lr": np.float32(0.01), "weight_decay": 1},
        {"arch": "linear", "head": "logits"},
    ],
)
def test_train_config_bounds_are_inclusive(changes):
    config = TrainConfig(**changes)
    for name, value in changes.items():
        assert getattr(config, name) == value


@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_an_accepted_rate_is_a_positive_finite_float32(value):
    """What the config admits survives the cast to float32 that training does; and every
    positive float32 value is admitted."""
    try:
        config = TrainConfig(lr=value, weight_decay=abs(value))
    except ConfigError as err:
        assert err.field in ("lr", "weight_decay")
        assert not (FLOAT32_TINY <= value <= FLOAT32_MAX)
        return
    as_float32 = np.float32(config.lr), np.float32(config.weight_decay)
    assert all(math.isfinite(v) for v in as_float32)
    assert as_float32[0] > 0


def test_train_config_round_trips_and_is_frozen():
    config = TrainConfig(arch="linear", head="logits", epochs=7, lr=0.01, seed=3)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown fields: colour") as info:
        TrainConfig.from_dict({**config.to_dict(), "colour": "red"})
    assert info.value.field == "config"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3  # type: ignore[misc]


# ---------------------------------------------------------------- SweepConfig


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"arch": ("both", "resnet")}, "arch", "got 'resnet'"),
        ({"head": ("sigmoid", "tanh")}, "head", "got 'tanh'"),
        ({"lr": ()}, "lr", "needs at least one value"),
        ({"weight_decay": (0.0, -1.0)}, "weight_decay", ">= 0"),
        ({"lr": (0.01, 1e39)}, "lr", "float32"),
        ({"seeds": 0}, "seeds", "from 1 to 1,000,000"),
        ({"chunk_size": 0}, "chunk_size", "from 1 to 100,000"),
        ({"chunk_size": MAX_CHUNK + 1}, "chunk_size", "from 1 to 100,000"),
        ({"group_size": -1}, "group_size", "from 0"),
        (
            {"seeds": MAX_NETS // 2 + 1, "lr": (0.1, 0.2)},
            "seeds",
            "x learning rates x weight decays is 1,000,002 nets; at most 1,000,000",
        ),
    ],
)
def test_sweep_config_refuses_naming_the_field(changes, field, problem):
    with pytest.raises(ConfigError) as info:
        SweepConfig(**changes)
    assert info.value.field == field
    assert problem in str(info.value)


def test_sweep_config_expands_both_and_drops_repeats():
    sweep = SweepConfig(
        arch=("linear", "both"), head=("logits", "logits"), lr=(0.1, 0.01, 0.1), seeds=5
    )
    assert sweep.arch == ("linear", "atten")
    assert sweep.head == ("logits",)
    assert sweep.lr == (0.1, 0.01)
    assert sweep.nets_per_run == 5 * 2 * 1
    assert SweepConfig(seeds=MAX_NETS).nets_per_run == MAX_NETS
    assert sweep.to_dict()["lr"] == [0.1, 0.01]
