"""Render what a run measured: plots, report.md, a self-contained report.html, comparisons."""

from .plots import plot_accuracy_vs_sparsity, plot_layer_sparsity, plot_training_curves
from .render import compare_runs, write_report

__all__ = [
    "compare_runs",
    "plot_accuracy_vs_sparsity",
    "plot_layer_sparsity",
    "plot_training_curves",
    "write_report",
]
