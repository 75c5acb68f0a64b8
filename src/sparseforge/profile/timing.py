"""The one timing helper for the whole repo: wall-clock samples of a callable after warm-up,
summarised as median / min / mean. Everything that reports a time goes through `measure`."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Samples of one callable in seconds; the median is the number to report."""

    median_s: float
    min_s: float
    mean_s: float
    repeats: int
    samples: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> Timing:
        """Summarise raw samples (seconds); at least one is required."""
        if not samples:
            raise ValueError("Timing needs at least one sample")
        s = tuple(float(x) for x in samples)
        return cls(statistics.median(s), min(s), statistics.fmean(s), len(s), s)


def _needs_sync(device: str | torch.device | None) -> bool:
    if device is None:
        return False
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def measure(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    repeats: int = 20,
    min_time_s: float = 0.0,
    device: str | torch.device | None = None,
    inference: bool = False,
) -> Timing:
    """Time `fn()` `repeats` times after `warmup` untimed calls, sampling on past `repeats` until
    the samples add up to `min_time_s`. On a CUDA device it synchronises around each call so a
    sample covers the kernels, not just their launch; `inference=True` runs in inference_mode."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if min_time_s < 0:
        raise ValueError(f"min_time_s must be >= 0, got {min_time_s}")
    sync = _needs_sync(device)
    samples: list[float] = []
    total = 0.0
    with torch.inference_mode() if inference else contextlib.nullcontext():
        for _ in range(warmup):
            fn()
        while len(samples) < repeats or total < min_time_s:
            if sync:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if sync:
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            samples.append(elapsed)
            total += elapsed
    return Timing.from_samples(samples)
