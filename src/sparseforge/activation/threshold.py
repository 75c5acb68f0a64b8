"""Activation threshold shifting (ProSparse step 3): the largest FATReLU threshold θ whose
quality loss on validation data, measured by a user callable, stays within a tolerance. One θ is
shared by all given sites (no per-layer search)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .relu import FATReLU, set_threshold


@dataclass
class ThresholdSearch:
    threshold: float
    loss: float
    evaluated: list[tuple[float, float]] = field(default_factory=list)  # (θ, loss) in order


def search_threshold(
    modules: Mapping[str, FATReLU] | Sequence[FATReLU],
    quality_loss: Callable[[], float],
    tolerance: float,
    *,
    grid: Sequence[float] | None = None,
    high: float | None = None,
    iterations: int = 8,
) -> ThresholdSearch:
    """Find θ and set it on `modules`. `quality_loss()` evaluates the model with the thresholds
    currently set (e.g. 1 − mean cosine to the original on validation data; lower is better).

    With `grid`: θ values tried in increasing order; the answer is the last one before the
    first whose loss exceeds `tolerance` (so every smaller grid θ also passes). Without it:
    bisection on [0, `high`] for `iterations` steps, assuming the loss grows with θ. θ = 0 is
    evaluated first; if even it fails, the thresholds are left at 0 and the result says so by a
    loss above the tolerance."""
    mods = list(modules.values()) if isinstance(modules, Mapping) else list(modules)
    if not mods:
        raise ValueError("search_threshold needs at least one FATReLU module")
    if grid is None and (high is None or high <= 0):
        raise ValueError("give either grid=[...] or high=<largest θ to try> (> 0) for bisection")
    evaluated: list[tuple[float, float]] = []

    def evaluate(theta: float) -> float:
        set_threshold(mods, theta)
        loss = float(quality_loss())
        if math.isnan(loss):
            raise ValueError(f"quality_loss returned NaN at threshold {theta}")
        evaluated.append((theta, loss))
        return loss

    best, best_loss = 0.0, evaluate(0.0)
    if best_loss <= tolerance:
        if grid is not None:
            for theta in sorted(float(g) for g in grid if g > 0):
                loss = evaluate(theta)
                if loss > tolerance:
                    break
                best, best_loss = theta, loss
        else:
            lo, hi = 0.0, float(high)
            loss_hi = evaluate(hi)
            if loss_hi <= tolerance:
                best, best_loss = hi, loss_hi
            else:
                for _ in range(iterations):
                    mid = 0.5 * (lo + hi)
                    loss = evaluate(mid)
                    if loss <= tolerance:
                        lo, best, best_loss = mid, mid, loss
                    else:
                        hi = mid
    set_threshold(mods, best)
    return ThresholdSearch(best, best_loss, evaluated)
