"""Pareto figures of the quantize report: accuracy vs weight bytes (every scored mixed-precision
candidate, its front, and the uniform references) and accuracy vs latency (measured rows
only). Drawn on a bare Figure with the Agg canvas, like report/plots.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..report.plots import _DPI, _save
from .mixed_search import pareto_points

_KIB = 1024.0


def plot_size_pareto(candidates: Sequence[Mapping[str, Any]],
                     references: Mapping[str, tuple[float, float]], chosen: Mapping[str, Any],
                     path: Path) -> Path:
    """Validation accuracy vs weight KiB: candidates (grey), their front (line), the chosen
    assignment (star) and `references` {label: (bytes, accuracy)} such as fp32 and int8."""
    if not candidates:
        raise ValueError("plot_size_pareto needs at least one candidate")
    fig = Figure(figsize=(6.5, 4.2), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    xs = [c["weight_bytes"] / _KIB for c in candidates]
    ys = [c["val_accuracy"] for c in candidates]
    ax.scatter(xs, ys, color="#9a9a9a", s=16, label="candidates", zorder=2)
    front = pareto_points(list(zip(xs, ys, strict=True)))
    ax.plot([xs[i] for i in front], [ys[i] for i in front], color="#3b75af", marker="o",
            ms=4, label="Pareto front", zorder=3)
    ax.scatter([chosen["weight_bytes"] / _KIB], [chosen["val_accuracy"]], marker="*", s=180,
               color="#d62728", label="chosen", zorder=4)
    for label, (size, acc) in references.items():
        ax.scatter([size / _KIB], [acc], marker="s", s=40, zorder=4)
        ax.annotate(label, (size / _KIB, acc), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("weight KiB (quantized layers, log)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Mixed precision: accuracy vs size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_latency_pareto(rows: Mapping[str, tuple[float, float]], batch: int, path: Path) -> Path:
    """Test accuracy vs latency (ms at `batch`), one labelled point per measured row."""
    if not rows:
        raise ValueError("plot_latency_pareto needs at least one measured row")
    fig = Figure(figsize=(6.0, 4.0), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    for label, (ms, acc) in rows.items():
        ax.scatter([ms], [acc], s=40, zorder=3)
        ax.annotate(label, (ms, acc), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(f"latency at batch {batch} (ms, median)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs latency (measured rows)")
    ax.grid(alpha=0.3)
    return _save(fig, path)
