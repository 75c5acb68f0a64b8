import pytest

from sparseforge.report.plots import (
    plot_accuracy_vs_sparsity,
    plot_layer_sparsity,
    plot_training_curves,
)


def test_layer_sparsity_plot(tmp_path, assert_png):
    layers = [{"name": "a", "sparsity": 0.5}, {"name": "b", "params": 10, "nonzeros": 1}]
    path = plot_layer_sparsity(layers, tmp_path / "sub" / "layers.png")
    assert path == tmp_path / "sub" / "layers.png"
    assert_png(path)


def test_training_curves_with_gaps_and_phases(tmp_path, assert_png, metrics):
    assert_png(plot_training_curves(metrics, tmp_path / "curves.png"))


def test_training_curves_with_restarting_epochs_and_only_epoch(tmp_path, assert_png):
    metrics = [{"epoch": 1, "phase": "a"}, {"epoch": 1, "phase": "b"}, {"epoch": 2}]
    assert_png(plot_training_curves(metrics, tmp_path / "curves.png"))


def test_accuracy_vs_sparsity_plot(tmp_path, assert_png):
    points = [("dense", 0.0, 0.92), ("gmp90", 0.9, 0.915)]
    assert_png(plot_accuracy_vs_sparsity(points, tmp_path / "acc.png"))


@pytest.mark.parametrize(
    "plot", [plot_layer_sparsity, plot_training_curves, plot_accuracy_vs_sparsity]
)
def test_empty_input_is_an_error(plot, tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        plot([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
