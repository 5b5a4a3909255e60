"""TrainConfig.matmul_precision: validated like every field, a flag of its own, recorded in
checkpoints, and a checkpoint written before the field existed still loads."""

from __future__ import annotations

import pickle

import pytest
from helpers import assert_usage_error, call, save_untrained

from jax_iris.cli import train as train_command
from jax_iris.config import MATMUL_PRECISIONS, ConfigError, TrainConfig
from jax_iris.io import checkpoint


def test_highest_is_the_default_and_every_precision_is_accepted():
    assert TrainConfig().matmul_precision == "highest"
    assert MATMUL_PRECISIONS == ("highest", "high", "default")
    for precision in MATMUL_PRECISIONS:
        config = TrainConfig(matmul_precision=precision)
        assert config.to_dict()["matmul_precision"] == precision
        assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("value", ["tf32", "HIGHEST", "", None, 3])
def test_other_values_are_refused_naming_the_field(value):
    with pytest.raises(ConfigError) as info:
        TrainConfig(matmul_precision=value)
    assert info.value.field == "matmul_precision"
    assert info.value.problem.startswith("must be one of highest, high, default, got ")


def test_a_dict_without_the_field_takes_the_default():
    old = TrainConfig(epochs=7).to_dict()
    del old["matmul_precision"]
    assert TrainConfig.from_dict(old) == TrainConfig(epochs=7, matmul_precision="highest")


def test_the_flag_is_derived_from_the_field(capsys):
    args = train_command.parser().parse_args(["--matmul-precision", "default"])
    assert args.matmul_precision == "default"
    assert train_command.parser().parse_args([]).matmul_precision == "highest"
    help_text = train_command.parser().format_help()
    assert "--matmul-precision {highest,high,default}" in help_text
    outcome = call(train_command.main, ["--matmul-precision", "tf32"], capsys)
    assert_usage_error(outcome, "train.py", "--matmul-precision", "invalid choice: 'tf32'")


def test_checkpoints_record_it_and_older_ones_load(tmp_path):
    path = save_untrained(tmp_path / "high.pkl", matmul_precision="high")
    assert checkpoint.load(path).config.matmul_precision == "high"

    # A checkpoint written before the field existed: the same payload without it.
    payload = pickle.loads(path.read_bytes())
    del payload["config"]["matmul_precision"]
    older = tmp_path / "older.pkl"
    older.write_bytes(pickle.dumps(payload, protocol=4))
    loaded = checkpoint.load(older)
    assert loaded.config.matmul_precision == "highest"
    assert loaded.config.epochs == 3
