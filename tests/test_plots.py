"""The blog's convergence figures from saved checkpoints, and a sweep's histograms.

(The plot command's refusals are in test_cli; the script as a process in test_scripts.)
"""

from __future__ import annotations

import struct
import types
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import call, fake_history, save_untrained

from jax_iris.cli import plot as plot_command
from jax_iris.report.plots import (
    FIGURES,
    SIGMOID_LOSS_FLOOR,
    PlotError,
    Run,
    draw,
    load_runs,
    run_figures,
    sweep_histograms,
)
from jax_iris.train import Metrics, SplitMetrics, loss_and_accuracy

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_SIZE = (840, 540)  # plots._FIGSIZE at plots._DPI
SWEEP_PNG_SIZE = (1300, 400)  # 13 x 4 inches at 100 dpi
MATPLOTLIB_BLUE, MATPLOTLIB_ORANGE = (31, 119, 180), (255, 127, 14)  # colours C0, C1
EPOCHS = {"atten": 60, "linear": 40}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("runs")
    return {
        arch: save_untrained(folder / f"{arch}.pkl", arch, epochs=n) for arch, n in EPOCHS.items()
    }


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def pixels_near(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 30) -> int:
    rgb_image = (image[..., :3] * 255).astype(int)
    return int(np.all(np.abs(rgb_image - np.array(rgb)) <= tolerance, axis=-1).sum())


@pytest.mark.slow
def test_plot_command_writes_both_figures(tmp_path, capsys, runs):
    import matplotlib.image

    out_dir = tmp_path / "plots"
    code, out, err = call(
        plot_command.main, [runs["atten"], runs["linear"], "--out", out_dir], capsys
    )
    assert (code, err) == (0, "")
    assert sorted(p.name for p in out_dir.iterdir()) == ["accuracy.png", "loss.png"]
    assert out.splitlines() == [
        f"wrote {out_dir / 'accuracy.png'}",
        f"wrote {out_dir / 'loss.png'}",
    ]
    for name in ("accuracy.png", "loss.png"):
        assert png_size((out_dir / name).read_bytes()) == PNG_SIZE
        image = matplotlib.image.imread(out_dir / name)
        # Both runs are drawn: each line colour covers a visible stretch of pixels.
        assert pixels_near(image, MATPLOTLIB_BLUE) > 300
        assert pixels_near(image, MATPLOTLIB_ORANGE) > 300


@pytest.mark.slow
def test_default_out_folder_is_plots(tmp_path, capsys, runs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert call(plot_command.main, [runs["atten"]], capsys).code == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["accuracy.png", "loss.png"]


@pytest.mark.parametrize("figure", FIGURES, ids=lambda f: f.metric)
def test_each_figure_draws_every_epoch_with_labels(runs, figure):
    loaded = load_runs([runs["atten"], runs["linear"]])
    ax = draw(figure, loaded).axes[0]
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (
        figure.title,
        "epoch",
        figure.ylabel,
    )
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend[:2] == ["Atten_Model", "Linear_Model"]
    for line, epochs in zip(ax.get_lines(), EPOCHS.values()):
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, epochs + 1))
        np.testing.assert_allclose(line.get_ydata(), fake_history(epochs)[figure.metric], rtol=1e-7)
    if figure.metric == "loss":
        floor = ax.get_lines()[2]
        np.testing.assert_allclose(floor.get_ydata(), SIGMOID_LOSS_FLOOR)
        assert f"{SIGMOID_LOSS_FLOOR:.4f}" in legend[2]
    else:
        assert ax.get_ylim() == (0.0, 1.02)
        assert len(ax.get_lines()) == 2


def test_the_floor_is_the_least_loss_a_sigmoid_head_allows():
    """Outputs in (0, 1): the best is 1 for the right class and 0 for the others."""
    best = jnp.asarray([[1.0, 0.0, 0.0]])
    floor = float(loss_and_accuracy(best, jnp.asarray([0])).loss)
    assert floor == pytest.approx(SIGMOID_LOSS_FLOOR, abs=1e-6)
    inside = jnp.asarray([[0.99, 0.01, 0.02]])
    assert float(loss_and_accuracy(inside, jnp.asarray([0])).loss) > SIGMOID_LOSS_FLOOR


def test_logits_head_has_no_sigmoid_floor():
    ax = draw(FIGURES[1], [Run("logits run", fake_history(10, 1.0, 0.1), head="logits")]).axes[0]
    assert len(ax.get_lines()) == 1


def test_runs_of_the_same_net_are_told_apart_by_path(tmp_path, runs):
    """Even long paths that share their beginning: the label keeps the file name."""
    folder = tmp_path / ("a_long_folder_name_" * 4)
    folder.mkdir()
    first = save_untrained(folder / "seed_1.pkl", "atten", epochs=20)
    second = save_untrained(folder / "seed_2.pkl", "atten", epochs=20)
    labels = [run.label for run in load_runs([runs["atten"], first, second])]
    assert len(set(labels)) == 3
    assert all(label.startswith("Atten_Model (") for label in labels)
    assert labels[1].endswith("seed_1.pkl)") and labels[2].endswith("seed_2.pkl)")
    assert load_runs([runs["atten"], runs["linear"]])[0].label == "Atten_Model"


@pytest.mark.slow
def test_run_figures_draws_in_memory(tmp_path, runs):
    files = run_figures(load_runs([runs["linear"]]), tmp_path / "figs")
    assert sorted(files) == [tmp_path / "figs" / "accuracy.png", tmp_path / "figs" / "loss.png"]
    assert all(png_size(data) == PNG_SIZE for data in files.values())
    assert not (tmp_path / "figs").exists()  # the caller writes them
    with pytest.raises(PlotError, match="nothing to plot"):
        run_figures([], tmp_path)


@pytest.mark.slow
def test_sweep_histograms_is_one_png_of_every_split():
    def grid(accuracy: float, nets: int):
        metrics = Metrics(np.full(nets, 0.6, np.float32), np.full(nets, accuracy, np.float32))
        return types.SimpleNamespace(final=SplitMetrics(metrics, metrics, metrics))

    data = sweep_histograms(
        {("atten", "sigmoid"): grid(0.9, 5), ("linear", "sigmoid"): grid(0.6, 5)}
    )
    assert png_size(data) == SWEEP_PNG_SIZE
