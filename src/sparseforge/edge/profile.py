"""Profile every split point: head latency on the edge (this CPU, `edge_threads` threads,
stretched by an optional emulated slowdown exactly as the client stretches it), activation bytes at each transfer precision, and the
accuracy drop each precision causes on calibration data. Tail latencies come from the cloud
process (`cloud.py`) and are passed in."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .planner import SplitProfile
from .splits import OUTPUT, split_model, split_points
from .wire import PRECISIONS, decode, encode, nbytes, parse_header


def edge_ms(fn: Callable[[], object], slowdown: float = 1.0, repeats: int = 20) -> float:
    """Median ms of `fn()` run the way the edge client runs it: compute, then sleep
    (slowdown - 1) x the compute time; each sample is a cold call after that idle time, which
    on a shared CPU costs more than a hot loop, so the planner sees what the client will."""
    samples = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first call is a warm-up
            start = time.perf_counter()
            fn()
            if slowdown > 1.0:
                time.sleep((time.perf_counter() - start) * (slowdown - 1.0))
            samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples[1:])


def roundtrip(x: Tensor, precision: str) -> Tensor:
    """`x` after encoding at `precision` and decoding, exactly what the server computes on."""
    header, body = encode(x, precision)
    return decode(parse_header(header), body)


@torch.no_grad()
def accuracy_drop(head: nn.Module, tail: nn.Module, images: Tensor, labels: Tensor,
                  batch: int, precisions: tuple[str, ...] = PRECISIONS) -> dict[str, float]:
    """Accuracy (percentage points) lost at each precision vs the plain model on the
    calibration set, quantizing each request of `batch` images with its own int8 scale."""
    correct = dict.fromkeys(("ref", *precisions), 0)
    for start in range(0, len(images), batch):
        act = head(images[start:start + batch])
        y = labels[start:start + batch]
        correct["ref"] += int((tail(act).argmax(1) == y).sum())
        for p in precisions:
            correct[p] += int((tail(roundtrip(act, p)).argmax(1) == y).sum())
    return {p: 100.0 * (correct["ref"] - correct[p]) / len(images) for p in precisions}


def profile_splits(model: nn.Module, example: Tensor, tail_ms: dict[str, float],
                   images: Tensor, labels: Tensor, *, edge_threads: int = 1,
                   edge_slowdown: float = 1.0, repeats: int = 20) -> list[SplitProfile]:
    """One SplitProfile per split of `model` (in order): `example` is one request's batch,
    `tail_ms` the cloud's tail latency per split name (all-edge needs none)."""
    if edge_slowdown < 1.0:
        raise ValueError(f"edge_slowdown is a factor >= 1 (the edge is slower), got {edge_slowdown}")
    model = model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(edge_threads)
    try:
        with torch.no_grad():
            reply = nbytes(model(example).numel(), "fp32")
            profiles = []
            for point in split_points(model):
                head, tail = split_model(model, point.name)
                act = head(example)
                head_ms = 0.0 if point.index < 0 else edge_ms(
                    lambda h=head: h(example), edge_slowdown, repeats)
                missing = point.name != OUTPUT and point.name not in tail_ms
                if missing:
                    raise ValueError(f"no cloud tail latency for split {point.name!r}")
                profiles.append(SplitProfile(
                    name=point.name, head_ms=head_ms,
                    tail_ms=0.0 if point.name == OUTPUT else tail_ms[point.name],
                    bytes={} if point.name == OUTPUT else
                    {p: nbytes(act.numel(), p) for p in PRECISIONS},
                    accuracy_drop={} if point.name == OUTPUT else
                    accuracy_drop(head, tail, images, labels, len(example)),
                    reply_bytes=0 if point.name == OUTPUT else reply,
                ))
    finally:
        torch.set_num_threads(threads)
    return profiles
