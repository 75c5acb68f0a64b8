"""Importance scores: each criterion maps a layer's weight (and, for Taylor, its accumulated
gradient statistics) to nonnegative elementwise scores. Group schemes rank groups by the mean
score, so `magnitude` ranks groups by their L1 norm and `l2` by their (squared) L2 norm."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import Registry


@dataclass
class Criterion:
    """A scoring function and whether it needs gradients accumulated during training."""

    score: Callable[[Tensor, Tensor | None, torch.Generator | None], Tensor]
    needs_grad: bool = False


CRITERIA: Registry[Criterion] = Registry("pruning criterion")


def _register(name: str, needs_grad: bool = False):
    def add(fn):
        CRITERIA.register(name)(Criterion(fn, needs_grad))
        return fn

    return add


@_register("magnitude")
def magnitude(weight: Tensor, grad_stat: Tensor | None = None, generator=None) -> Tensor:
    """|w|: the classic magnitude criterion; over a group, the L1 group norm."""
    return weight.detach().abs()


@_register("l2")
def l2(weight: Tensor, grad_stat: Tensor | None = None, generator=None) -> Tensor:
    """w^2: over a group, the squared L2 group norm (same ranking as the L2 norm)."""
    return weight.detach().pow(2)


@_register("taylor", needs_grad=True)
def taylor(weight: Tensor, grad_stat: Tensor | None, generator=None) -> Tensor:
    """First-order Taylor |w * dL/dw|, averaged over the steps since the last update
    (Molchanov et al. 2019): the loss change a weight's removal predicts."""
    if grad_stat is None:
        raise RuntimeError(
            "the taylor criterion needs gradients: prune after at least one training step "
            "(Session.step() after optimizer.step()), or use criterion: magnitude"
        )
    return grad_stat


@_register("random")
def random(weight: Tensor, grad_stat: Tensor | None = None, generator=None) -> Tensor:
    """Uniform random scores: the baseline every criterion must beat."""
    return torch.rand(weight.shape, generator=generator, device="cpu").to(weight.device)


class TaylorAccumulator:
    """Running mean of |w * g| per weight, fed after every backward pass."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def update(self, weight: Tensor, grad: Tensor | None) -> None:
        if grad is None:
            return
        term = (weight.detach() * grad.detach()).abs()
        self.total = term if self.total is None else self.total + term
        self.count += 1

    def value(self) -> Tensor | None:
        return None if self.total is None else self.total / self.count

    def reset(self) -> None:
        self.total, self.count = None, 0
