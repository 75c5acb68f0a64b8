"""Latency vs bandwidth: all-edge, all-cloud and the collaborative plan, each split labelled.
Drawn on a bare Figure with the Agg canvas, like report/plots.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_latency_vs_bandwidth(bandwidths: Sequence[float], series: Mapping[str, Sequence[float]],
                              chosen: Sequence[str], path: Path, title: str) -> Path:
    """One line per series (ms at each bandwidth), the chosen split written at each point of
    the `collaborative` series; log-log axes. Returns the written path."""
    from matplotlib.figure import Figure

    from ..report.plots import _DPI, _save

    fig = Figure(figsize=(6.4, 4.2), dpi=_DPI)
    ax = fig.add_subplot()
    for name, ms in series.items():
        ax.plot(bandwidths, ms, marker="o", label=name, lw=2.5 if name == "collaborative" else 1.2)
    if "collaborative" in series:
        for bw, ms, split in zip(bandwidths, series["collaborative"], chosen, strict=True):
            ax.annotate(split, (bw, ms), textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.set(xscale="log", yscale="log", xlabel="bandwidth (Mbit/s)", ylabel="latency (ms)",
           title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
