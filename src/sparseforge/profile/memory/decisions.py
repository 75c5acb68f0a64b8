"""Decisions a memory trace supports: which blocks could be swapped out to host memory between
uses, which could be recomputed instead of kept, which are freed long after their last use, and
what peak a bigger batch will need (an affine fit over profiled batch sizes)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .analysis import BlockStats, Peak
from .recorder import Trace

PCIE4_X16_GBPS = 25.0  # a realistic host<->device rate (PCIe 4.0 x16 peaks at 32 GB/s)


@dataclass(frozen=True)
class Candidate:
    block: int
    nbytes: int
    category: str
    module: str
    op: str  # the op that allocated it
    reason: str
    live_at_peak: bool


def _made_by(trace: Trace, stats: BlockStats, b: int) -> str:
    seq = int(stats.alloc_seq[b])
    return trace.op[seq] if 0 <= seq < trace.n_ops else "(before recording)"


def _live_at(stats: BlockStats, b: int, seq: int) -> bool:
    return bool(stats.alloc_seq[b] <= seq < stats.free_seq[b])


def swap_candidates(
    trace: Trace, stats: BlockStats, at_peak: Peak, bandwidth_gbps: float = PCIE4_X16_GBPS,
) -> list[Candidate]:
    """Blocks whose longest idle interval between two accesses is long enough to copy them out
    and back: longest ATI > 2 * size / bandwidth. Largest first; `live_at_peak` marks those whose
    interval spans the peak (swapping them lowers the peak by their size)."""
    rate = bandwidth_gbps * 1e9
    out = []
    for b in np.flatnonzero(stats.max_ati_s > 2 * np.asarray(trace.nbytes) / rate):
        b = int(b)
        start, gap = int(stats.max_ati_start[b]), int(stats.max_ati_ops[b])
        spans_peak = start < at_peak.seq < start + gap
        out.append(Candidate(
            b, trace.nbytes[b], trace.category[b], trace.module[b], _made_by(trace, stats, b),
            f"idle {stats.max_ati_s[b] * 1e3:.2f} ms > 2 x transfer {2e3 * trace.nbytes[b] / rate:.2f} ms",
            spans_peak,
        ))
    return sorted(out, key=lambda c: -c.nbytes)


@functools.cache
def expensive_ops() -> frozenset[str]:
    """Ops torch's FLOP counter has a formula for (matmuls, convolutions, attention), plus the
    CPU convolution kernels it reaches through `convolution`. (Imported on use: the FLOP
    counter imports triton.)"""
    from torch.utils.flop_counter import flop_registry

    names = {getattr(k, "__name__", str(k)) for k in flop_registry}
    return frozenset(names | {"mkldnn_convolution", "_convolution_mode", "conv2d", "linear"})


def _is_cheap(op: str) -> bool:
    """Pointwise ops, reshuffles and reductions: cheap to recompute next to what the FLOP
    counter counts."""
    return op.split(".")[0] not in expensive_ops()


def recompute_candidates(
    trace: Trace, stats: BlockStats, at_peak: Peak, min_bytes: int = 4096,
) -> list[Candidate]:
    """Activations of at least `min_bytes` allocated in the forward pass, alive at the peak and
    read again only in the backward pass, made by a cheap op (no matmul/convolution): keeping
    the op's inputs and recomputing the output in backward saves their size at the peak."""
    out = []
    for b in range(len(trace.nbytes)):
        seq = int(stats.alloc_seq[b])
        if trace.nbytes[b] < min_bytes:
            continue
        if seq < 0 or trace.op_phase[seq] != "forward" or not _live_at(stats, b, at_peak.seq):
            continue
        if trace.category[b] != "Activation" or not _is_cheap(trace.op[seq]):
            continue
        if stats.last_access[b] < 0 or trace.op_phase[int(stats.last_access[b])] != "backward":
            continue
        out.append(Candidate(
            b, trace.nbytes[b], trace.category[b], trace.module[b], trace.op[seq],
            f"{trace.op[seq]} output kept for backward", True,
        ))
    return sorted(out, key=lambda c: -c.nbytes)


def early_free_candidates(
    trace: Trace, stats: BlockStats, at_peak: Peak, min_idle_ops: int = 1,
) -> list[Candidate]:
    """Blocks still allocated at the peak although their last access came before it: freeing
    them at their last use would lower the peak by their size."""
    out = []
    for b in range(len(trace.nbytes)):
        last = int(stats.last_access[b])
        if last < 0 or not _live_at(stats, b, at_peak.seq) or at_peak.seq - last < min_idle_ops:
            continue
        if stats.free_seq[b] >= trace.n_ops:  # never freed: persistent (parameters, state)
            continue
        out.append(Candidate(
            b, trace.nbytes[b], trace.category[b], trace.module[b], _made_by(trace, stats, b),
            f"last used at op {last}, freed at op {int(stats.free_seq[b])}", True,
        ))
    return sorted(out, key=lambda c: -c.nbytes)


@dataclass(frozen=True)
class PeakFit:
    """peak(batch) = intercept + slope * batch, least squares over the profiled batch sizes."""

    intercept: float
    slope: float
    batch_sizes: tuple[int, ...]
    peaks: tuple[int, ...]

    def predict(self, batch: int) -> float:
        return self.intercept + self.slope * batch

    def largest_batch(self, budget_bytes: float) -> int:
        """The largest batch whose predicted peak fits `budget_bytes` (0 if none does)."""
        if self.slope <= 0:
            raise ValueError("peak does not grow with the batch; profile more distinct batch sizes")
        return max(0, int(np.floor((budget_bytes - self.intercept) / self.slope)))


def fit_peak(batch_sizes: list[int], peaks: list[int]) -> PeakFit:
    """Fit peak memory against batch size (two or more distinct sizes)."""
    if len(set(batch_sizes)) < 2:
        raise ValueError(f"need two or more distinct batch sizes to predict, got {batch_sizes}")
    slope, intercept = np.polyfit(np.asarray(batch_sizes, float), np.asarray(peaks, float), 1)
    return PeakFit(float(intercept), float(slope), tuple(batch_sizes), tuple(int(p) for p in peaks))
