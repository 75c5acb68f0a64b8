"""Memory figures: live memory over the recorded steps as a stacked area by category, the largest
blocks' lifetimes with their accesses, the access-time-interval histogram, and peak vs batch size
with the fitted prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ...report.plots import _DPI, _save
from .analysis import BlockStats, Events, live_bytes
from .decisions import PeakFit
from .recorder import Trace

MB = 2**20


def plot_timeline(trace: Trace, path: Path, events: Events | None = None) -> Path:
    """Stacked area of live MiB per category against op index; step starts as dotted lines."""
    ev = events or Events.of(trace)
    live, cats = live_bytes(trace, ev)
    x = np.r_[0, ev.seq]
    fig = Figure(figsize=(9.0, 3.8), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.stackplot(x, *(live[:, i] / MB for i in range(len(cats))), labels=cats, step="post")
    for s in trace.step_starts[1:]:
        ax.axvline(s, color="k", ls=":", lw=0.8)
    ax.set_xlabel("op index (dotted: training step starts)")
    ax.set_ylabel("live memory (MiB)")
    ax.set_title("Memory by category over the recorded steps")
    ax.legend(loc="upper left", fontsize=7, ncol=4)
    ax.margins(x=0)
    return _save(fig, path)


def plot_lifetimes(trace: Trace, stats: BlockStats, path: Path, events: Events | None = None, top: int = 30) -> Path:
    """One row per block (the `top` largest allocated during the last recorded step): a bar from
    alloc to free, a dot per access (read: blue, write: red)."""
    ev = events or Events.of(trace)
    nbytes = np.asarray(trace.nbytes)
    last_step = trace.step_starts[-1] if trace.step_starts else 0
    transient = np.flatnonzero(stats.alloc_seq >= last_step)
    chosen = transient[np.argsort(-nbytes[transient], kind="stable")[:top]]
    chosen = chosen[np.argsort(stats.alloc_seq[chosen], kind="stable")]
    fig = Figure(figsize=(9.0, max(2.5, 0.22 * len(chosen) + 1.2)), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    for row, b in enumerate(chosen):
        ax.plot([stats.alloc_seq[b], stats.free_seq[b]], [row, row], color="#bbbbbb", lw=4, solid_capstyle="butt")
        mine = ev.block == b
        for kind, color in ((1, "#3b75af"), (2, "#c0392b")):
            sel = mine & (ev.kind == kind)
            ax.scatter(ev.seq[sel], np.full(int(sel.sum()), row), s=8, color=color, zorder=3)
    labels = [f"{trace.module[b] or '-'} {trace.category[b]} {nbytes[b] / MB:.1f} MiB" for b in chosen]
    ax.set_yticks(range(len(chosen)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("op index (bar: allocated; dots: reads blue, writes red)")
    ax.set_title(f"Lifetimes and accesses of the {len(chosen)} largest blocks of the last step")
    return _save(fig, path)


def plot_ati_histogram(stats: BlockStats, path: Path) -> Path:
    """Histogram of every access-time interval (log-spaced bins, milliseconds)."""
    ms = stats.atis_s * 1e3
    ms = ms[ms > 0]
    fig = Figure(figsize=(6.0, 3.5), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    if len(ms):
        bins = np.logspace(np.log10(ms.min()), np.log10(ms.max()) + 1e-9, 40)
        ax.hist(ms, bins=bins, color="#3b75af")
        ax.set_xscale("log")
    ax.set_xlabel("access-time interval (ms)")
    ax.set_ylabel("intervals")
    ax.set_title("Time between consecutive accesses of a block")
    return _save(fig, path)


def plot_prediction(fit: PeakFit, path: Path, measured: dict[int, int] | None = None) -> Path:
    """Profiled peaks, the fitted line, and any peaks measured to check it."""
    top = max([*fit.batch_sizes, *(measured or {})])
    xs = np.linspace(0, top * 1.1, 50)
    fig = Figure(figsize=(6.0, 3.5), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(xs, [fit.predict(x) / MB for x in xs], color="#888888", label="fit")
    ax.scatter(fit.batch_sizes, np.asarray(fit.peaks) / MB, color="#3b75af", zorder=3, label="profiled")
    if measured:
        ax.scatter(list(measured), np.asarray(list(measured.values())) / MB, color="#c0392b", marker="x", zorder=3, label="measured")
    ax.set_xlabel("batch size")
    ax.set_ylabel("peak memory (MiB)")
    ax.set_title("Peak memory vs batch size")
    ax.legend(fontsize=7)
    return _save(fig, path)
