"""Latency vs bandwidth: all-edge, all-cloud and the collaborative plan, each split labelled."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_latency_vs_bandwidth(bandwidths: Sequence[float], series: Mapping[str, Sequence[float]],
                              chosen: Sequence[str], path: Path, title: str) -> Path:
    """One line per series (ms at each bandwidth), the chosen split written at each point of
    the `collaborative` series; log-log axes. Returns the written path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
