"""What a trace says: live memory over time by category, the peak and what it holds, each block's
lifetime and access-time intervals (ATI), the training iteration's period found from the op
sequence alone, and how many blocks repeat their pattern exactly from one iteration to the next
(the ISPASS 2021 paper's finding, checked on the user's model)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .recorder import Trace

KIND_CODE = {"alloc": 0, "read": 1, "write": 2, "free": 3}


@dataclass(frozen=True)
class Events:
    """The trace's events as arrays (program order)."""

    seq: np.ndarray
    time_s: np.ndarray  # seconds since the first event
    kind: np.ndarray  # KIND_CODE
    block: np.ndarray

    @classmethod
    def of(cls, trace: Trace) -> Events:
        t = np.asarray(trace.time_ns, dtype=np.int64)
        return cls(
            np.asarray(trace.seq, dtype=np.int64),
            (t - (t[0] if len(t) else 0)) / 1e9,
            np.asarray([KIND_CODE[k] for k in trace.kind], dtype=np.int8),
            np.asarray(trace.block, dtype=np.int64),
        )


def categories(trace: Trace) -> list[str]:
    """The categories present, largest total first."""
    total: dict[str, int] = {}
    for c, n in zip(trace.category, trace.nbytes, strict=True):
        total[c] = total.get(c, 0) + n
    return sorted(total, key=lambda c: -total[c])


def live_bytes(trace: Trace, events: Events | None = None) -> tuple[np.ndarray, list[str]]:
    """Live bytes per category after each event: an (n_events + 1, n_categories) array whose
    row 0 is the state when recording began (the pre-existing blocks), and the category names."""
    ev = events or Events.of(trace)
    cats = categories(trace)
    col = {c: i for i, c in enumerate(cats)}
    nbytes = np.asarray(trace.nbytes, dtype=np.int64)
    block_col = np.asarray([col[c] for c in trace.category], dtype=np.int64)
    delta = np.zeros((len(ev.kind) + 1, len(cats)), dtype=np.int64)
    pre = np.flatnonzero(np.asarray(trace.preexisting, dtype=bool))
    np.add.at(delta[0], block_col[pre], nbytes[pre])
    sign = np.where(ev.kind == KIND_CODE["alloc"], 1, np.where(ev.kind == KIND_CODE["free"], -1, 0))
    rows = np.flatnonzero(sign) + 1
    hit = ev.block[rows - 1]
    np.add.at(delta, (rows, block_col[hit]), sign[rows - 1] * nbytes[hit])
    return np.cumsum(delta, axis=0), cats


@dataclass(frozen=True)
class Peak:
    nbytes: int
    by_category: dict[str, int]
    seq: int  # the op during (or just before) which the peak happened
    op: str
    module: str
    phase: str


def peak(trace: Trace, events: Events | None = None) -> Peak:
    """The largest live total, when it happened, and what it was made of."""
    ev = events or Events.of(trace)
    live, cats = live_bytes(trace, ev)
    total = live.sum(axis=1)
    row = int(total.argmax())
    seq = int(ev.seq[row - 1]) if row > 0 else 0
    seq = min(seq, trace.n_ops - 1)
    where = (trace.op[seq], trace.op_module[seq], trace.op_phase[seq]) if trace.n_ops else ("", "", "")
    by_cat = {c: int(v) for c, v in zip(cats, live[row], strict=True) if v}
    return Peak(int(total[row]), by_cat, seq, *where)


@dataclass(frozen=True)
class BlockStats:
    """Per block (arrays indexed by block id): when it was allocated and freed (op seq; -1 for
    pre-existing, n_ops if alive at the end), its accesses, the longest access-time interval in
    ops and seconds, and the gap from its last access to its free."""

    alloc_seq: np.ndarray
    free_seq: np.ndarray
    n_access: np.ndarray
    first_access: np.ndarray
    last_access: np.ndarray
    max_ati_ops: np.ndarray
    max_ati_s: np.ndarray
    max_ati_start: np.ndarray  # seq at which the longest interval begins
    idle_before_free: np.ndarray  # ops from last access to free (0 when never freed)
    atis_s: np.ndarray  # every access-time interval of every block, seconds (for histograms)


def block_stats(trace: Trace, events: Events | None = None) -> BlockStats:
    ev = events or Events.of(trace)
    n, end = len(trace.nbytes), trace.n_ops
    alloc = np.full(n, -1, dtype=np.int64)
    free = np.full(n, end, dtype=np.int64)
    a = ev.kind == KIND_CODE["alloc"]
    alloc[ev.block[a]] = ev.seq[a]
    f = ev.kind == KIND_CODE["free"]
    free[ev.block[f]] = ev.seq[f]
    acc = np.flatnonzero((ev.kind == KIND_CODE["read"]) | (ev.kind == KIND_CODE["write"]))
    order = acc[np.argsort(ev.block[acc], kind="stable")]  # accesses grouped by block, in time
    blk, seq, ts = ev.block[order], ev.seq[order], ev.time_s[order]
    n_access = np.bincount(blk, minlength=n)
    first = np.full(n, -1, dtype=np.int64)
    last = np.full(n, -1, dtype=np.int64)
    first[blk[::-1]] = seq[::-1]
    last[blk] = seq
    same = blk[1:] == blk[:-1]  # consecutive accesses of one block
    gap_ops = np.where(same, seq[1:] - seq[:-1], -1)
    gap_s = np.where(same, ts[1:] - ts[:-1], -1.0)
    max_ops = np.zeros(n, dtype=np.int64)
    max_s = np.zeros(n)
    start = np.full(n, -1, dtype=np.int64)
    if len(gap_s):
        best = np.lexsort((gap_s, blk[:-1]))  # per block, its largest interval sorts last
        owner = blk[:-1][best]
        last_of_block = np.r_[owner[1:] != owner[:-1], True]
        pick = best[last_of_block]
        keep = gap_s[pick] >= 0
        pick = pick[keep]
        b = blk[:-1][pick]
        max_s[b], max_ops[b], start[b] = gap_s[pick], gap_ops[pick], seq[:-1][pick]
    freed = (free < end) & (last >= 0)
    idle = np.where(freed, free - last, 0)
    return BlockStats(alloc, free, n_access, first, last, max_ops, max_s, start, idle, gap_s[gap_s >= 0])


@dataclass(frozen=True)
class Period:
    """The training iteration as found in the op sequence: iterations start at `starts` (op
    seqs), `length` ops is their typical length, and `match` is the share of consecutive
    iteration pairs whose op sequences are identical (1.0: exactly periodic)."""

    length: int
    starts: tuple[int, ...]
    match: float

    @property
    def stable(self) -> bool:
        return self.match == 1.0


def _symbols(trace: Trace) -> np.ndarray:
    keys: dict[tuple[str, str, str], int] = {}
    return np.asarray([
        keys.setdefault(k, len(keys))
        for k in zip(trace.op, trace.op_module, trace.op_phase, strict=True)
    ], dtype=np.int64)


def detect_period(trace: Trace) -> Period | None:
    """Find the iteration from the ops alone (no step markers): most ops (op, module, phase)
    occur once per iteration, so the commonest occurrence count is the number of iterations,
    and the earliest op occurring that often marks where each iteration starts. A
    data-dependent branch inserts ops without moving that anchor, so such a trace still splits
    into iterations, with `match` below 1. None if no op repeats."""
    s = _symbols(trace)
    positions: dict[int, list[int]] = {}
    for i, sym in enumerate(s.tolist()):
        positions.setdefault(sym, []).append(i)
    counts: dict[int, int] = {}
    for pos in positions.values():
        if len(pos) >= 2:
            counts[len(pos)] = counts.get(len(pos), 0) + 1
    if not counts:
        return None
    n_iter = max(counts, key=lambda c: (counts[c], -c))
    anchor = min((sym for sym, pos in positions.items() if len(pos) == n_iter), key=lambda sym: positions[sym][0])
    starts = positions[anchor]
    segments = [tuple(s[a:b].tolist()) for a, b in zip(starts, [*starts[1:], len(s)], strict=True)]
    pairs = list(zip(segments, segments[1:], strict=False))
    match = sum(x == y for x, y in pairs) / len(pairs)
    return Period(int(np.median(np.diff(starts))), tuple(starts), match)


@dataclass(frozen=True)
class Stability:
    """How many (block, iteration) patterns occur again in the next iteration: a block's
    pattern in an iteration is its size and its events (alloc, reads, writes, free) at offsets
    from the iteration's start; a parameter contributes one per iteration, an activation
    usually one, a gradient freed by the next iteration's zero_grad two."""

    repeating: int
    total: int
    repeating_bytes: int
    total_bytes: int

    @property
    def share(self) -> float:
        return self.repeating / self.total if self.total else 1.0


def pattern_stability(trace: Trace, period: Period, events: Events | None = None) -> Stability:
    """Compare each iteration's block patterns with the next's as multisets (block identities
    differ from one iteration to the next; sizes and timing should not)."""
    ev = events or Events.of(trace)
    starts = np.asarray(period.starts, dtype=np.int64)
    n_iter = len(starts)
    if n_iter < 2:
        return Stability(0, 0, 0, 0)
    k_of = np.searchsorted(starts, ev.seq, side="right") - 1
    k_of[ev.seq >= trace.n_ops] = -1  # frees after the last op belong to an unrecorded iteration
    offset = ev.seq - starts[np.maximum(k_of, 0)]
    patterns: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for off, kind, b, k in zip(offset.tolist(), ev.kind.tolist(), ev.block.tolist(), k_of.tolist(), strict=True):
        if k >= 0:
            patterns.setdefault((b, k), []).append((kind, off))
    counts: list[dict[tuple, int]] = [{} for _ in range(n_iter)]
    for (b, k), pattern in patterns.items():
        sig = (trace.nbytes[b], tuple(pattern))
        counts[k][sig] = counts[k].get(sig, 0) + 1
    repeating = total = rep_bytes = tot_bytes = 0
    for k in range(n_iter - 1):
        for sig, count in counts[k].items():
            hits = min(count, counts[k + 1].get(sig, 0))
            repeating += hits
            total += count
            rep_bytes += hits * sig[0]
            tot_bytes += count * sig[0]
    return Stability(repeating, total, rep_bytes, tot_bytes)
