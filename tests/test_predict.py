"""Predict: the library function against ``evaluate`` and an independent forward pass, the
command's three input forms and three formats, several checkpoints, and each bad input
once (exit 2, one line naming the row and column, nothing on stdout)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import (
    SCRIPTS,
    SHORT_EPOCHS,
    SUBPROCESS_TIMEOUT,
    assert_usage_error,
    call,
    save_untrained,
)

from jax_iris import predict, rows
from jax_iris.cli import predict as predict_cli
from jax_iris.config import TrainConfig
from jax_iris.data import load_split
from jax_iris.io import checkpoint
from jax_iris.models import get_model
from jax_iris.train import evaluate, fit

PROG = "predict.py"
# The compiled softmax runs in float32; the reference below in float64. float32 rounds
# a probability near 0.5 to within 3e-8; 1e-6 leaves room for XLA's exp and sum order.
PROBABILITY_TOLERANCE = 1e-6
SETOSA, VIRGINICA = "5.1,3.5,1.4,0.2", "6.7,3.0,5.2,2.3"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A short-trained checkpoint per blog arch: {arch: path}."""
    folder = tmp_path_factory.mktemp("nets")
    paths = {}
    for arch in ("atten", "linear"):
        config = TrainConfig(arch=arch, epochs=SHORT_EPOCHS, log_every=SHORT_EPOCHS)
        result = fit(config)
        paths[arch] = checkpoint.save(folder / f"{arch}.pkl", result.params, config=config)
    return paths


def softmax64(outputs: np.ndarray) -> np.ndarray:
    z = np.asarray(outputs, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["atten", "linear"])
def test_predict_agrees_with_evaluate_and_an_independent_forward_pass(trained, arch):
    ckpt = checkpoint.load(trained[arch])
    table = evaluate(ckpt.config, ckpt.params)
    model = get_model(ckpt.arch, ckpt.config.head)
    for name, part in zip(("train", "val", "test"), load_split(ckpt.config.split_seed)):
        got = predict.predict(ckpt, part.x)
        outputs = np.asarray(model.apply(ckpt.params, part.x))  # eager, unpadded
        np.testing.assert_array_equal(got.classes, outputs.argmax(axis=1))
        np.testing.assert_allclose(
            got.probabilities, softmax64(outputs), rtol=0, atol=PROBABILITY_TOLERANCE
        )
        correct = int(np.sum(got.classes == part.y))
        assert correct == round(getattr(table, name).accuracy * len(part.y))
        assert got.species == tuple(rows.SPECIES[c] for c in outputs.argmax(axis=1))


@pytest.mark.slow
def test_predict_compiles_once_for_any_number_of_rows(trained):
    ckpt = checkpoint.load(trained["atten"])
    x = np.tile(load_split().test.x, (300, 1))  # 4,500 rows: five blocks
    first = predict.predict(ckpt, x[:1])
    compiled = predict._outputs_jit._cache_size()
    many = predict.predict(ckpt, x)
    for n in (2, 150, 1023, 1025):
        predict.predict(ckpt, x[:n])
    assert predict._outputs_jit._cache_size() == compiled
    assert many.probabilities.shape == (len(x), 3) and many.classes.shape == (len(x),)
    np.testing.assert_array_equal(many.probabilities[:1], first.probabilities)
    np.testing.assert_array_equal(many.classes[:15], many.classes[-15:])


@pytest.mark.slow
def test_predict_takes_a_loaded_checkpoint_a_net_or_bare_params(tmp_path):
    """A file is loaded where files are read (jax_iris.io); predict refuses a file name."""
    path = save_untrained(tmp_path / "linear.pkl", "linear")
    ckpt = checkpoint.load(path)
    x = load_split().val.x
    by_checkpoint = predict.predict(ckpt, x)
    net = predict.Net("linear", "sigmoid", ckpt.params)
    for other in (net, ckpt.params):  # bare params: the arch is read from the shapes
        np.testing.assert_array_equal(
            predict.predict(other, x).probabilities, by_checkpoint.probabilities
        )
    logits = predict.predict(ckpt.params, x, head="logits")
    assert not np.allclose(logits.probabilities, by_checkpoint.probabilities)
    for name in (path, str(path)):
        with pytest.raises(TypeError, match=r"not a file name.*checkpoint\.load\(path\)"):
            predict.predict(name, x)
    with pytest.raises(ValueError, match=r"rows must be \[n, 4\], got shape \(15, 3\)"):
        predict.predict(ckpt, x[:, :3])


# ---------------------------------------------------------------- the command


def predictions_of(path: Path, text_rows: list[str]) -> predict.Predictions:
    return predict.predict(checkpoint.load(path), rows.from_arguments(text_rows))


@pytest.mark.slow
def test_rows_as_arguments_print_a_table(trained, capsys):
    outcome = call(
        predict_cli.main, [trained["atten"], "--row", SETOSA, "--row", VIRGINICA], capsys
    )
    assert (outcome.code, outcome.err) == (0, "")
    expected = predictions_of(trained["atten"], [SETOSA, VIRGINICA])
    lines = outcome.out.splitlines()
    assert lines[0].split() == ["Atten_Model"]
    body = [line.split() for line in lines[3:5]]
    assert body[0][:5] == ["1", *SETOSA.split(",")] and body[1][:5] == [
        "2",
        "6.7",
        "3",
        "5.2",
        "2.3",
    ]
    for i, words in enumerate(body):
        assert words[5] == expected.species[i]
        assert [float(w) for w in words[6:9]] == pytest.approx(
            expected.probabilities[i].tolist(), abs=5e-5
        )
    assert lines[-1] == predict_cli.TABLE_NOTE


@pytest.mark.slow
def test_csv_file_with_a_header_in_any_order(trained, tmp_path, capsys):
    split = load_split().test
    order = [2, 0, 3, 1]
    lines = [",".join(rows.FEATURES[i] for i in order)]
    lines += [",".join(repr(float(v)) for v in row[order]) for row in split.x]
    path = tmp_path / "flowers.csv"
    path.write_text("\n".join(lines) + "\n\n")
    outcome = call(predict_cli.main, [trained["atten"], "--input", path, "--format", "csv"], capsys)
    assert (outcome.code, outcome.err) == (0, "")
    got = list(csv.DictReader(io.StringIO(outcome.out)))
    expected = predict.predict(checkpoint.load(trained["atten"]), split.x)
    assert len(got) == len(split.x)
    for i, line in enumerate(got):
        assert [float(line[name]) for name in rows.FEATURES] == pytest.approx(split.x[i].tolist())
        assert line["Atten_Model species"] == expected.species[i]
        probabilities = [float(line[f"Atten_Model P({s})"]) for s in rows.SPECIES]
        assert probabilities == pytest.approx(expected.probabilities[i].tolist(), abs=1e-8)


@pytest.mark.slow
def test_stdin_without_a_header_and_two_nets_as_json(trained, capsys, monkeypatch):
    monkeypatch.setattr(
        sys, "stdin", io.TextIOWrapper(io.BytesIO(f"{SETOSA}\n{VIRGINICA}\n".encode()))
    )
    argv = [trained["atten"], trained["linear"], "--input", "-", "--format", "json"]
    outcome = call(predict_cli.main, argv, capsys)
    assert (outcome.code, outcome.err) == (0, "")
    document = json.loads(outcome.out)
    assert document["species"] == list(rows.SPECIES)
    assert [n["label"] for n in document["nets"]] == ["Atten_Model", "Linear_Model"]
    assert [r["features"]["petal length (cm)"] for r in document["rows"]] == [1.4, 5.2]
    for arch, label in (("atten", "Atten_Model"), ("linear", "Linear_Model")):
        expected = predictions_of(trained[arch], [SETOSA, VIRGINICA])
        for i, row in enumerate(document["rows"]):
            got = row["predictions"][label]
            assert (got["species"], got["class"]) == (expected.species[i], expected.classes[i])
            assert got["probabilities"] == expected.probabilities[i].tolist()


@pytest.mark.slow
def test_the_same_arch_twice_is_labelled_by_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for seed in (1, 2):
        save_untrained(tmp_path / f"a{seed}.pkl", seed=seed)
    outcome = call(
        predict_cli.main, ["a1.pkl", "a2.pkl", "--row", SETOSA, "--format", "json"], capsys
    )
    assert outcome.code == 0, outcome.err
    document = json.loads(outcome.out)
    assert [n["label"] for n in document["nets"]] == ["a1.pkl", "a2.pkl"]
    first, second = (document["rows"][0]["predictions"][name] for name in ("a1.pkl", "a2.pkl"))
    assert first["probabilities"] != second["probabilities"]  # two nets, two answers


class EndlessStdin:
    """A stdin that never ends: ``read(n)`` always gives n bytes of valid rows."""

    buffer = property(lambda self: self)

    def read(self, n: int = -1) -> bytes:
        assert n > 0, "an unbounded read of an endless stream"
        return (b"5.1,3.5,1.4,0.2\n" * (n // 16 + 1))[:n]


def _file(tmp_path: Path, content: bytes) -> list[object]:
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    return ["--input", path]


def _huge(tmp_path: Path) -> list[object]:
    path = tmp_path / "huge.csv"
    with open(path, "wb") as file:  # sparse: no disk used
        file.truncate(10 * 2**30)
    return ["--input", path]


BAD_INPUTS = {
    "three-values": (lambda t: ["--row", "5.1,3.5,1.4"], ["--row 1", "has 3 values, expected 4"]),
    "five-values": (
        lambda t: ["--row", SETOSA, "--row", "1,2,3,4,5"],
        ["--row 2 ('1,2,3,4,5') has 5 values, expected 4"],
    ),
    "not-a-number": (
        lambda t: _file(t, b"5.1,3.5,1.4,0.2\n6.0,wide,4.0,1.2\n"),
        ["in.csv row 2 (line 2), column 2 (sepal width (cm)): 'wide' is not a number"],
    ),
    "nan": (
        lambda t: ["--row", "5.1,nan,1.4,0.2"],
        ["column 2 (sepal width (cm)): 'nan' is not a finite number"],
    ),
    "inf": (
        lambda t: _file(
            t, b"petal width,petal length,sepal width,sepal length\n0.2,1.4,3.5,-inf\n"
        ),
        ["row 1 (line 2), column 4 (sepal length (cm)): '-inf' is not a finite number"],
    ),
    "empty": (lambda t: _file(t, b"\n  \n"), ["in.csv holds no rows"]),
    "header-only": (lambda t: _file(t, ",".join(rows.FEATURES).encode()), ["a header and no rows"]),
    "huge-file": (lambda t: _huge(t), [f"more than the {rows.MAX_INPUT_BYTES:,} bytes"]),
    "unknown-column": (
        lambda t: _file(t, b"sepal length (cm),sepal width (cm),petal length (cm),colour\n"),
        ["in.csv line 1, column 4: unknown column 'colour'", "sepal length (cm)"],
    ),
    "missing-column": (
        lambda t: _file(t, b"sepal length,sepal width,petal length\n1,2,3\n"),
        ["the header has no petal width (cm) column"],
    ),
    "no-rows": (lambda t: [], ["no rows: give --row"]),
    "both-sources": (lambda t: ["--row", SETOSA, *_file(t, b"1,2,3,4\n")], ["not both"]),
    "not-text": (lambda t: _file(t, b"\xff\xfe1,2,3,4\n"), ["in.csv is not UTF-8 text"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_and_prints_nothing(trained, tmp_path, capsys, case):
    make, needles = BAD_INPUTS[case]
    outcome = call(predict_cli.main, [trained["atten"], *make(tmp_path)], capsys)
    assert_usage_error(outcome, PROG, *needles)
    assert outcome.out == ""


def test_endless_stdin_is_refused_at_the_limit(trained, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", EndlessStdin())
    outcome = call(predict_cli.main, [trained["atten"], "--input", "-"], capsys)
    assert_usage_error(outcome, PROG, f"stdin holds more than the {rows.MAX_INPUT_BYTES:,} bytes")
    assert outcome.out == ""


@pytest.mark.slow
def test_too_many_rows_are_refused(trained, tmp_path, capsys):
    argv = [trained["atten"], *_file(tmp_path, b"1,1,1,1\n" * (rows.MAX_ROWS + 1))]
    outcome = call(predict_cli.main, argv, capsys)
    assert_usage_error(outcome, PROG, f"more than the {rows.MAX_ROWS:,} rows allowed")
    assert outcome.out == ""


def test_a_bad_checkpoint_after_a_good_one_prints_nothing(trained, tmp_path, capsys):
    outcome = call(
        predict_cli.main, [trained["atten"], tmp_path / "nope.pkl", "--row", SETOSA], capsys
    )
    assert_usage_error(outcome, PROG, "nope.pkl: no such checkpoint file")
    assert outcome.out == ""


def test_a_diverged_net_is_refused(tmp_path, capsys):
    ckpt = checkpoint.load(save_untrained(tmp_path / "ok.pkl"))
    params = jax.tree_util.tree_map(lambda p: np.full_like(p, np.nan), ckpt.params)
    bad = checkpoint.save(tmp_path / "nan.pkl", params, config=ckpt.config)
    outcome = call(predict_cli.main, [bad, "--row", SETOSA], capsys)
    # refused when loaded: a checkpoint's params must be finite
    assert_usage_error(outcome, PROG, "nan.pkl: layer_1/k/bias holds values that are not finite")
    assert outcome.out == ""


@pytest.mark.slow
@pytest.mark.subprocess
def test_predict_script_reads_stdin(tmp_path):
    path = save_untrained(tmp_path / "atten.pkl")
    proc = subprocess.run(
        [sys.executable, SCRIPTS / "predict.py", path, "--input", "-", "--format", "csv"],
        input=f"{SETOSA}\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    header, line = proc.stdout.splitlines()
    assert line.split(",")[5] == predictions_of(path, [SETOSA]).species[0]
