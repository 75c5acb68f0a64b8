"""The split planner: from a per-split profile, pick the split and transfer precision with the
lowest predicted end-to-end latency (head + bytes*8/bandwidth + rtt + tail) among those whose
measured accuracy drop is within the tolerance. Pure arithmetic over the profile."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .splits import OUTPUT


@dataclass(frozen=True)
class SplitProfile:
    """One split: edge head and cloud tail latency (ms), activation bytes per transfer
    precision, accuracy drop (percentage points vs the fp32 model) per precision, reply bytes."""

    name: str
    head_ms: float
    tail_ms: float
    bytes: dict[str, int]
    accuracy_drop: dict[str, float] = field(default_factory=dict)
    reply_bytes: int = 0


@dataclass(frozen=True)
class Plan:
    """The choice and its predicted latency, split into its terms."""

    split: str
    precision: str | None  # None: all-edge, nothing is sent
    bandwidth_mbps: float
    rtt_ms: float
    predicted_ms: float
    head_ms: float
    transfer_ms: float
    tail_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def predict(p: SplitProfile, precision: str | None, bandwidth_mbps: float, rtt_ms: float) -> Plan:
    """Latency model of one (split, precision): all-edge sends nothing and has no round trip."""
    if p.name == OUTPUT:
        return Plan(p.name, None, bandwidth_mbps, rtt_ms, p.head_ms, p.head_ms, 0.0, 0.0)
    if precision is None:
        raise ValueError(f"split {p.name!r} sends a tensor: give a transfer precision")
    sent = p.bytes[precision] + p.reply_bytes
    transfer = sent * 8 / (bandwidth_mbps * 1e6) * 1e3 + rtt_ms
    total = p.head_ms + transfer + p.tail_ms
    return Plan(p.name, precision, bandwidth_mbps, rtt_ms, total, p.head_ms, transfer, p.tail_ms)


def candidates(profile: list[SplitProfile], bandwidth_mbps: float, rtt_ms: float,
               tolerance: float) -> list[Plan]:
    """Every (split, precision) whose accuracy drop is within `tolerance` points, predicted."""
    if bandwidth_mbps <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth_mbps} Mbit/s")
    plans = []
    for p in profile:
        if p.name == OUTPUT:
            plans.append(predict(p, None, bandwidth_mbps, rtt_ms))
            continue
        for precision in p.bytes:
            if p.accuracy_drop.get(precision, 0.0) <= tolerance:
                plans.append(predict(p, precision, bandwidth_mbps, rtt_ms))
    return plans


def plan(profile: list[SplitProfile], bandwidth_mbps: float, rtt_ms: float,
         tolerance: float = 0.5) -> Plan:
    """The fastest admissible (split, precision); ties go to the earlier split in the list."""
    options = candidates(profile, bandwidth_mbps, rtt_ms, tolerance)
    if not options:
        raise ValueError("no split meets the accuracy tolerance; the profile needs an `output` "
                         "split (all-edge), which always does")
    return min(options, key=lambda c: c.predicted_ms)
