import os
import pickle

import jax
import numpy as np
import pytest

from jax_iris import checkpoint
from jax_iris.checkpoint import CheckpointError
from jax_iris.models import init_params
from jax_iris.train import TrainConfig


@pytest.fixture(scope="module")
def atten_params():
    return init_params("atten", jax.random.key(0))


def _save(path, params, arch="atten", **kwargs):
    return checkpoint.save(path, params, config=TrainConfig(arch=arch, epochs=5), **kwargs)


def test_round_trip_is_exact(tmp_path, atten_params):
    metrics = {"train": {"loss": 0.56, "accuracy": 0.99}}
    history = {"loss": np.linspace(1, 0.5, 5, dtype=np.float32), "accuracy": np.ones(5, np.float32)}
    path = _save(tmp_path / "a.pkl", atten_params, metrics=metrics, history=history)
    loaded = checkpoint.load(path)
    assert loaded.arch == "atten"
    assert loaded.config == TrainConfig(arch="atten", epochs=5)
    assert loaded.metrics == metrics
    np.testing.assert_array_equal(loaded.history["loss"], history["loss"])
    original = jax.tree_util.tree_leaves_with_path(atten_params)
    restored = jax.tree_util.tree_leaves_with_path(loaded.params)
    assert [p for p, _ in original] == [p for p, _ in restored]
    for (_, a), (_, b) in zip(original, restored):
        assert type(b) is np.ndarray and b.dtype == np.float32
        assert np.asarray(a).tobytes() == b.tobytes()


def test_file_holds_only_plain_numpy(tmp_path, atten_params):
    path = _save(tmp_path / "a.pkl", atten_params)
    payload = pickle.loads(path.read_bytes())
    assert payload["format"] == "jax_iris.checkpoint" and payload["version"] == 1
    assert all(type(v) is np.ndarray for v in payload["params"].values())
    assert b"jax" not in pickle.dumps(payload["params"])  # no jax.Array objects inside


def test_failed_save_keeps_previous_file(tmp_path, atten_params, monkeypatch):
    path = _save(tmp_path / "a.pkl", atten_params)
    before = path.read_bytes()
    other = init_params("atten", jax.random.key(1))

    def crash(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(CheckpointError, match="No space left on device"):
        _save(path, other)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pkl"]  # temp file removed
    checkpoint.load(path)


def test_save_refuses_wrong_params(tmp_path, atten_params):
    with pytest.raises(CheckpointError, match="those of the atten net, not linear"):
        _save(tmp_path / "x.pkl", atten_params, arch="linear")
    partial = {"params": {k: v for k, v in atten_params["params"].items() if k != "linear"}}
    with pytest.raises(CheckpointError, match="do not fit the atten net: missing linear/bias"):
        _save(tmp_path / "x.pkl", partial)
    assert not (tmp_path / "x.pkl").exists()


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"format": "jax_iris.checkpoint", "x": _Exploit(marker)}))
    with pytest.raises(CheckpointError, match=r"refused.*(posix|os)\.system"):
        checkpoint.load(path)
    assert not marker.exists()


def test_truncated_file(tmp_path, atten_params):
    path = _save(tmp_path / "a.pkl", atten_params)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"a\.pkl: truncated"):
        checkpoint.load(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, this is not a pickle", "truncated, corrupt or not a pickle"),
        (b"", "truncated"),
        (pickle.dumps([1, 2, 3]), "not a jax_iris checkpoint"),
        (pickle.dumps({"format": "jax_iris.checkpoint", "version": 99}), "format version 99"),
    ],
)
def test_junk_files(tmp_path, content, message):
    path = tmp_path / "junk.pkl"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        checkpoint.load(tmp_path / "nope.pkl")


def test_wrong_arch_and_tampered_shape(tmp_path, atten_params):
    path = _save(tmp_path / "a.pkl", atten_params)
    payload = pickle.loads(path.read_bytes())

    relabelled = {**payload, "arch": "linear", "config": {**payload["config"], "arch": "linear"}}
    path.write_bytes(pickle.dumps(relabelled))
    with pytest.raises(CheckpointError, match="params are those of the atten net, not linear"):
        checkpoint.load(path)

    params = dict(payload["params"])
    params["layer_2/q/kernel"] = np.zeros((10, 21), np.float32)
    path.write_bytes(pickle.dumps({**payload, "params": params}))
    with pytest.raises(CheckpointError, match=r"layer_2/q/kernel has shape \(10, 21\)"):
        checkpoint.load(path)
