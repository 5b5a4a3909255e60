"""Checkpoint format version 2: round trips, what the file holds, what load refuses.

Crafted hostile files, special files, the memory and time bounds and the fuzzing
live in test_checkpoint_safety.py.
"""

import os
import pickle
import pickletools

import jax
import numpy as np
import pytest

from jax_iris.io import checkpoint
from jax_iris.io.checkpoint import CheckpointError
from jax_iris.models import flatten_params, init_params, param_shapes, unflatten_params
from jax_iris.train import TrainConfig

BUILTIN_TYPES = (dict, list, str, int, float, bool, type(None), bytes)
FORMAT = checkpoint.FORMAT


@pytest.fixture(scope="module")
def atten_params():
    return init_params("atten", jax.random.key(0))


def _save(path, params, arch="atten", **kwargs):
    return checkpoint.save(path, params, config=TrainConfig(arch=arch, epochs=5), **kwargs)


def _payload(path):
    """The raw dict of a file this test wrote (plain pickle: a v2 file holds builtins only)."""
    return pickle.loads(path.read_bytes())


def _record(array):
    array = np.asarray(array)
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}


def _walk(value, depth=0):
    """Every object in a payload, with a depth bound (a payload nests 4 deep)."""
    assert depth < 8
    yield value
    children = value.items() if isinstance(value, dict) else value
    if isinstance(value, (dict, list)):
        for child in children:
            for item in child if isinstance(value, dict) else (child,):
                yield from _walk(item, depth + 1)


def test_round_trip_is_exact(tmp_path, atten_params):
    metrics = {"train": {"loss": 0.56, "accuracy": 0.99}}
    history = {"loss": np.linspace(1, 0.5, 5, dtype=np.float32), "accuracy": np.ones(5, np.float32)}
    path = _save(tmp_path / "a.pkl", atten_params, metrics=metrics, history=history)
    loaded = checkpoint.load(path)
    assert loaded.arch == "atten"
    assert loaded.config == TrainConfig(arch="atten", epochs=5)
    assert loaded.metrics == metrics
    for key in ("loss", "accuracy"):
        assert loaded.history[key].dtype == np.float32
        assert loaded.history[key].tobytes() == history[key].tobytes()
    original = jax.tree_util.tree_leaves_with_path(atten_params)
    restored = jax.tree_util.tree_leaves_with_path(loaded.params)
    assert [p for p, _ in original] == [p for p, _ in restored]
    for (_, a), (_, b) in zip(original, restored):
        assert type(b) is np.ndarray and b.dtype == np.float32
        assert b.flags.writeable and b.flags.owndata  # memory of its own, not the file's
        assert np.asarray(a).tobytes() == b.tobytes()


def test_float64_signed_zero_subnormal_and_big_endian_round_trip_bit_exact(tmp_path):
    flat = {
        name: np.arange(np.prod(shape), dtype=">f8").reshape(shape)
        for name, shape in param_shapes("linear").items()
    }
    # NaN and infinities are refused on load (test_checkpoint_safety); every finite bit
    # pattern survives, the sign of zero and a subnormal included
    flat["layer_3/bias"] = np.array([5e-324, -0.0, np.nextafter(1.0, 2.0)], np.float64)
    path = checkpoint.save(
        tmp_path / "l.pkl", unflatten_params(flat), config=TrainConfig(arch="linear")
    )
    got = flatten_params(checkpoint.load(path).params)
    for name, value in flat.items():
        assert got[name].dtype == np.float64 and got[name].shape == value.shape
        assert got[name].tobytes() == value.astype("<f8").tobytes()
    assert _payload(path)["params"]["layer_3/bias"]["dtype"] == "<f8"


def test_file_holds_only_builtins(tmp_path, atten_params):
    history = {"loss": np.ones(3, np.float32), "accuracy": np.zeros(3, np.float32)}
    metrics = {"train": {"loss": np.float32(0.5), "accuracy": jax.numpy.float32(1.0)}}
    path = _save(tmp_path / "a.pkl", atten_params, history=history, metrics=metrics)
    data = path.read_bytes()
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    forbidden = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ"}
    assert not ops & (forbidden | {"NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"})
    assert b"numpy" not in data and b"jaxlib" not in data and b"jax.Array" not in data
    payload = _payload(path)
    assert all(type(v) in BUILTIN_TYPES for v in _walk(payload))
    assert list(payload) == [
        "format", "version", "arch", "config", "metrics", "history", "params"
    ]  # fmt: skip
    assert (payload["format"], payload["version"], payload["arch"]) == (FORMAT, 2, "atten")
    assert payload["config"] == TrainConfig(epochs=5).to_dict()
    assert payload["metrics"] == {"train": {"loss": 0.5, "accuracy": 1.0}}
    assert payload["history"]["loss"] == {"dtype": "<f4", "shape": [3], "data": b"\0\0\x80?" * 3}
    kernel = payload["params"]["layer_1/k/kernel"]
    assert kernel["dtype"] == "<f4" and kernel["shape"] == [4, 10] and len(kernel["data"]) == 160
    assert set(payload["params"]) == set(param_shapes("atten"))


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
    as_int = jax.tree_util.tree_map(lambda a: np.asarray(a).astype(np.int32), atten_params)
    with pytest.raises(CheckpointError, match=r"is not a float32/float64 array \(dtype '<i4'\)"):
        _save(tmp_path / "x.pkl", as_int)
    assert not (tmp_path / "x.pkl").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": {"train": "0.5"}}, r"metrics/train is '0\.5'; metrics are dicts of numbers"),
        ({"metrics": {"a": {"b": {"c": {"d": {}}}}}}, "at most 4 deep"),
        ({"history": {"loss": np.ones(3, np.float32)}}, "missing accuracy"),
        (
            {"history": {"loss": np.ones(3, np.float32), "accuracy": np.ones(2, np.float32)}},
            r"differ in length \(3 and 2\)",
        ),
        (
            {"history": {"loss": np.ones((3, 1)), "accuracy": np.ones((3, 1))}},
            "history/loss is not a 1-D float32/float64 array",
        ),
    ],
)
def test_save_refuses_what_load_would_refuse(tmp_path, atten_params, kwargs, message):
    with pytest.raises(CheckpointError, match=message):
        _save(tmp_path / "x.pkl", atten_params, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_a_file_over_the_cap(tmp_path, atten_params, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 10_000)
    history = {"loss": np.ones(1000, np.float32), "accuracy": np.ones(1000, np.float32)}
    with pytest.raises(
        CheckpointError, match=r"x\.pkl: .* more than the 10,000 bytes a checkpoint may hold"
    ):
        _save(tmp_path / "x.pkl", atten_params, history=history)
    assert list(tmp_path.iterdir()) == []


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"format": "jax_iris.checkpoint", "x": _Exploit(marker)}))
    with pytest.raises(CheckpointError, match=r"refused: it asks to import (posix|os)\.system"):
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
        (b"hello, this is not a pickle", "corrupt"),
        (b"", "truncated, corrupt or not a pickle"),
        (pickle.dumps([1, 2, 3]), "not a jax_iris checkpoint"),
        (pickle.dumps({"format": "jax_iris.checkpoint", "version": 99}), "format version 99"),
        (pickle.dumps({"format": "jax_iris.checkpoint", "version": 1}), "format version 1,"),
        (pickle.dumps({"format": "jax_iris.checkpoint", "version": 2}), "missing arch, config"),
    ],
)
def test_junk_files(tmp_path, content, message):
    path = tmp_path / "junk.pkl"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        checkpoint.load(path)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        checkpoint.load(tmp_path / "nope.pkl")


def test_wrong_arch_and_tampered_shape(tmp_path, atten_params):
    path = _save(tmp_path / "a.pkl", atten_params)
    payload = _payload(path)

    relabelled = {**payload, "arch": "linear", "config": {**payload["config"], "arch": "linear"}}
    path.write_bytes(pickle.dumps(relabelled))
    with pytest.raises(CheckpointError, match="params are those of the atten net, not linear"):
        checkpoint.load(path)

    params = dict(payload["params"])
    params["layer_2/q/kernel"] = _record(np.zeros((10, 21), np.float32))
    path.write_bytes(pickle.dumps({**payload, "params": params}))
    with pytest.raises(
        CheckpointError,
        match=r"layer_2/q/kernel has shape \(10, 21\), the atten net needs \(10, 20\)",
    ):
        checkpoint.load(path)


def test_load_copes_with_both_archs_and_no_optional_fields(tmp_path):
    for arch in ("atten", "linear"):
        params = init_params(arch, jax.random.key(2))
        loaded = checkpoint.load(_save(tmp_path / f"{arch}.pkl", params, arch=arch))
        assert (loaded.arch, loaded.metrics, loaded.history) == (arch, None, None)
        shapes = {k: v.shape for k, v in flatten_params(loaded.params).items()}
        assert shapes == param_shapes(arch)
