"""Targets over time: a schedule maps a training step to the sparsity wanted at that step."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Constant:
    """The same target at every step (one-shot pruning holds it)."""

    value: float

    def __call__(self, step: int) -> float:
        return self.value


@dataclass(frozen=True)
class Cubic:
    """Zhu & Gupta (2017) gradual pruning: s(t) = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3,
    s_i before t0 and s_f from t1 on. Sparsity rises fast first, while the net is redundant."""

    initial: float
    final: float
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"cubic schedule ends (step {self.end}) before it starts ({self.start})")

    def __call__(self, step: int) -> float:
        if step <= self.start:
            return self.initial
        if step >= self.end:
            return self.final
        progress = (step - self.start) / (self.end - self.start)
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3
