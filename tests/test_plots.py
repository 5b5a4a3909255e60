"""plot.py: the blog's convergence figures from saved checkpoints."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from cli_helpers import assert_one_line_error, call

from jax_iris import checkpoint
from jax_iris.cli import EXIT_USAGE
from jax_iris.models import init_params
from jax_iris.plots import (
    FIGURES,
    INSTALL_HINT,
    SIGMOID_LOSS_FLOOR,
    Run,
    draw,
    load_runs,
    plot_command,
)
from jax_iris.train import TrainConfig

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_SIZE = (840, 540)  # plots._FIGSIZE at plots._DPI
MATPLOTLIB_BLUE, MATPLOTLIB_ORANGE = (31, 119, 180), (255, 127, 14)  # colours C0, C1
EPOCHS = {"atten": 60, "linear": 40}


def fake_history(epochs: int, start: float, end: float) -> dict[str, np.ndarray]:
    """A smooth, recognisable curve: loss falls from start to end, accuracy rises."""
    t = np.linspace(0.0, 1.0, epochs, dtype=np.float32)
    return {
        "loss": (start + (end - start) * t).astype(np.float32),
        "accuracy": (0.3 + 0.6 * t**2).astype(np.float32),
    }


def save_run(path: Path, arch: str, epochs: int, head: str = "sigmoid", history=True) -> Path:
    config = TrainConfig(arch=arch, epochs=epochs, head=head)
    hist = fake_history(epochs, 1.1, 0.6) if history else None
    params = init_params(arch, jax.random.key(0))
    return checkpoint.save(path, params, config=config, history=hist)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("runs")
    return {arch: save_run(folder / f"{arch}.pkl", arch, n) for arch, n in EPOCHS.items()}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def pixels_near(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 30) -> int:
    rgb_image = (image[..., :3] * 255).astype(int)
    return int(np.all(np.abs(rgb_image - np.array(rgb)) <= tolerance, axis=-1).sum())


def test_plot_writes_both_figures_as_pngs(tmp_path, capsys, runs):
    out_dir = tmp_path / "plots"
    code, out, err = call(plot_command, [runs["atten"], runs["linear"], "--out", out_dir], capsys)
    assert (code, err) == (0, "")
    assert sorted(p.name for p in out_dir.iterdir()) == ["accuracy.png", "loss.png"]
    assert out.splitlines() == [
        f"wrote {out_dir / 'accuracy.png'}",
        f"wrote {out_dir / 'loss.png'}",
    ]
    import matplotlib.image

    for name in ("accuracy.png", "loss.png"):
        assert png_size(out_dir / name) == PNG_SIZE
        image = matplotlib.image.imread(out_dir / name)
        # Both runs are drawn: each line colour covers a visible stretch of pixels.
        assert pixels_near(image, MATPLOTLIB_BLUE) > 300
        assert pixels_near(image, MATPLOTLIB_ORANGE) > 300


def test_default_out_folder_is_plots(tmp_path, capsys, runs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, _ = call(plot_command, [runs["atten"]], capsys)
    assert code == 0
    assert (tmp_path / "plots" / "accuracy.png").is_file()
    assert (tmp_path / "plots" / "loss.png").is_file()


@pytest.mark.parametrize("figure", FIGURES, ids=lambda f: f.metric)
def test_each_figure_draws_every_epoch_with_labels(runs, figure):
    loaded = load_runs([runs["atten"], runs["linear"]])
    ax = draw(figure, loaded).axes[0]
    assert ax.get_title() == figure.title
    assert ax.get_xlabel() == "epoch"
    assert ax.get_ylabel() == figure.ylabel
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend[:2] == ["Atten_Model", "Linear_Model"]
    for line, epochs in zip(ax.get_lines(), EPOCHS.values()):
        expected = fake_history(epochs, 1.1, 0.6)[figure.metric]
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, epochs + 1))
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-7)
    if figure.metric == "loss":
        floor = ax.get_lines()[2]
        np.testing.assert_allclose(floor.get_ydata(), SIGMOID_LOSS_FLOOR)
        assert round(SIGMOID_LOSS_FLOOR, 4) == 0.5514  # the blog's plateau, from DESIGN.md
        assert "0.5514" in legend[2]
    else:
        assert ax.get_ylim() == (0.0, 1.02)
        assert len(ax.get_lines()) == 2


def test_logits_head_has_no_sigmoid_floor():
    history = fake_history(10, 1.0, 0.1)
    ax = draw(FIGURES[1], [Run("logits run", history, head="logits")]).axes[0]
    assert len(ax.get_lines()) == 1


def test_runs_of_the_same_net_are_told_apart_by_path(tmp_path, runs):
    other = save_run(tmp_path / "seed1.pkl", "atten", 20)
    labels = [run.label for run in load_runs([runs["atten"], other])]
    assert labels == [f"Atten_Model ({runs['atten']})", f"Atten_Model ({other})"]


def test_missing_matplotlib_says_to_install_the_extra(tmp_path, capsys, runs, monkeypatch):
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    code, out, err = call(plot_command, [runs["atten"], "--out", tmp_path / "p"], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "plot.py: error:", INSTALL_HINT)
    assert "[plot]" in INSTALL_HINT
    assert out == "" and not (tmp_path / "p").exists()


def test_a_bad_run_leaves_existing_figures_untouched(tmp_path, capsys, runs):
    out_dir = tmp_path / "p"
    assert call(plot_command, [runs["atten"], "--out", out_dir], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    missing = tmp_path / "nope.pkl"
    code, out, err = call(plot_command, [runs["linear"], missing, "--out", out_dir], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, str(missing), "no such checkpoint file")
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before


def test_a_checkpoint_without_history_is_explained(tmp_path, capsys):
    bare = save_run(tmp_path / "bare.pkl", "linear", 5, history=False)
    code, _, err = call(plot_command, [bare, "--out", tmp_path / "p"], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, str(bare), "no per-epoch history", "train.py")
    assert not (tmp_path / "p").exists()


def test_out_under_a_regular_file_fails_before_reading(tmp_path, capsys, runs):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = call(plot_command, [tmp_path / "nope.pkl", "--out", blocker / "p"], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "not a folder", "--out")


def test_no_run_given_is_a_usage_error(capsys):
    code, _, err = call(plot_command, [], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "plot.py: error:", "RUN")


def test_plot_script_end_to_end(tmp_path, runs):
    proc = subprocess.run(
        [sys.executable, SCRIPT, runs["atten"], runs["linear"], "--out", tmp_path / "fig"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["accuracy.png", "loss.png"]
