"""Report figures as PNG files, drawn on a bare matplotlib Figure with the Agg canvas so no
global pyplot/backend state is touched."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .run import sparsity

_DPI = 120


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def plot_layer_sparsity(layers: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Horizontal bar per layer (model order, top to bottom) of its sparsity in percent; each
    layer needs `name` and `sparsity` or `params` + `nonzeros`."""
    if not layers:
        raise ValueError("plot_layer_sparsity needs at least one layer")
    names = [str(layer.get("name", "?")) for layer in layers]
    values = [100.0 * (sparsity(layer) or 0.0) for layer in layers]
    fig = Figure(figsize=(7.0, max(2.5, 0.32 * len(layers) + 1.2)), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    bars = ax.barh(range(len(names)), values, color="#3b75af")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("sparsity (%)")
    ax.set_title("Sparsity per layer")
    ax.bar_label(bars, labels=[f"{v:.1f}%" for v in values], padding=2, fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _epoch_axis(metrics: Sequence[Mapping[str, Any]]) -> tuple[list[float], str]:
    """Epoch numbers when they increase; a running count when they restart (e.g. per phase)."""
    epochs = [float(m["epoch"]) for m in metrics]
    if all(b > a for a, b in zip(epochs, epochs[1:], strict=False)):
        return epochs, "epoch"
    return [float(i) for i in range(1, len(epochs) + 1)], "epoch (cumulative over phases)"


def _series(xs: list[float], metrics: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0):
    pts = [
        (x, scale * float(m[key]))
        for x, m in zip(xs, metrics, strict=True)
        if m.get(key) is not None
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_training_curves(metrics: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Loss and accuracy (train and val) against epoch side by side, sparsity on a twin axis of
    the accuracy panel when recorded, and dashed lines where the `phase` changes."""
    if not metrics:
        raise ValueError("plot_training_curves needs at least one metrics record")
    xs, xlabel = _epoch_axis(metrics)
    fig = Figure(figsize=(11.0, 4.0), dpi=_DPI, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    panels = [
        (loss_ax, "Loss", "loss", [("train_loss", "train"), ("val_loss", "val")], 1.0),
        (
            acc_ax,
            "Accuracy",
            "accuracy (%)",
            [("train_accuracy", "train"), ("val_accuracy", "val")],
            100.0,
        ),
    ]
    for ax, title, ylabel, keys, scale in panels:
        drawn = False
        for key, label in keys:
            x, y = _series(xs, metrics, key, scale)
            if x:
                ax.plot(x, y, marker="o", markersize=3, label=label)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)

    handles, labels = acc_ax.get_legend_handles_labels()
    sx, sy = _series(xs, metrics, "sparsity", 100.0)
    if sx:
        twin = acc_ax.twinx()
        twin.plot(sx, sy, color="gray", linestyle=":", label="sparsity")
        twin.set_ylabel("sparsity (%)")
        twin.set_ylim(0, 105)
        more_h, more_l = twin.get_legend_handles_labels()
        handles, labels = handles + more_h, labels + more_l
    if handles:
        acc_ax.legend(handles, labels, loc="lower right", fontsize=8)
    if loss_ax.get_legend_handles_labels()[0]:
        loss_ax.legend(fontsize=8)

    phases = [m.get("phase") for m in metrics]
    for i, phase in enumerate(phases):
        if phase is None or (i > 0 and phase == phases[i - 1]):
            continue
        start = xs[0] if i == 0 else (xs[i - 1] + xs[i]) / 2
        if i > 0:
            for ax in (loss_ax, acc_ax):
                ax.axvline(start, color="black", linestyle="--", linewidth=0.8, alpha=0.5)
        loss_ax.annotate(
            str(phase),
            (start, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=7,
        )
    return _save(fig, path)


def plot_accuracy_vs_sparsity(points: Sequence[tuple[str, float, float]], path: Path) -> Path:
    """Scatter of (label, sparsity, accuracy) points, fractions shown as percent, each labelled
    (labels of coinciding points joined)."""
    if not points:
        raise ValueError("plot_accuracy_vs_sparsity needs at least one (label, sparsity, accuracy)")
    fig = Figure(figsize=(7.0, 4.5), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    merged: dict[tuple[float, float], list[str]] = {}
    for label, spars, acc in points:
        merged.setdefault((100.0 * spars, 100.0 * acc), []).append(label)
    xs = [x for x, _ in merged]
    ys = [y for _, y in merged]
    ax.scatter(xs, ys, color="#3b75af", zorder=3)
    for (x, y), labels in merged.items():
        ax.annotate(
            ", ".join(labels), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8
        )
    ax.set_xlim(min(-5.0, min(xs) - 5), 105)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs sparsity")
    ax.grid(alpha=0.3)
    return _save(fig, path)
