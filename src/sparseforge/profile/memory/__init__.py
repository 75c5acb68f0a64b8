"""Training memory behaviour: a per-block recorder of allocations and accesses, its analysis
(peak, lifetimes, access intervals, iteration period and stability), decisions (swap, recompute,
earlier frees, peak vs batch size) and the `profile memory` report."""

from .analysis import block_stats, detect_period, live_bytes, pattern_stability, peak
from .decisions import fit_peak
from .recorder import MemoryRecorder, Trace, record_steps
from .session import checkpoint_activations, record_training
from .store import load_trace, save_trace


def __getattr__(name: str):
    # the report side imports matplotlib (through sparseforge.report): loaded on first use, so
    # `import sparseforge` stays free of plotting
    if name in ("analyse", "profile_memory"):
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MemoryRecorder",
    "Trace",
    "analyse",
    "block_stats",
    "checkpoint_activations",
    "detect_period",
    "fit_peak",
    "live_bytes",
    "load_trace",
    "pattern_stability",
    "peak",
    "profile_memory",
    "record_steps",
    "record_training",
    "save_trace",
]
