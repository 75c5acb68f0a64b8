"""Shared machinery of pruning modifiers: the layers they own, gradient statistics for
gradient-based criteria, and applying a target through the mask engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import model_validator
from torch import Tensor, nn

from ..sparsity import CRITERIA, PruningSpec, TaylorAccumulator, apply_mask, compute_masks, get_mask
from ..sparsity.spec import Fraction

if TYPE_CHECKING:
    from ..session import Session


class PruningConfig(PruningSpec):
    """A PruningSpec plus the final sparsity; for N:M it defaults to (and must equal) 1 - n/m."""

    sparsity: Fraction | None = None

    @property
    def final_sparsity(self) -> float:
        if self.scheme.name == "nm":
            return 1.0 - self.scheme.n / self.scheme.m
        assert self.sparsity is not None  # checked by the validator
        return self.sparsity

    @model_validator(mode="after")
    def _sparsity_given(self) -> PruningConfig:
        if self.scheme.name == "nm":
            implied = self.final_sparsity
            if self.sparsity is not None and abs(self.sparsity - implied) > 1e-9:
                raise ValueError(
                    f"sparsity {self.sparsity} contradicts the {self.scheme.n}:{self.scheme.m} "
                    f"scheme (which means sparsity {implied:g}); drop `sparsity` or fix n and m"
                )
        elif self.sparsity is None:
            raise ValueError("`sparsity` is required (the final fraction of zero weights)")
        return self


def _weight_param(module: nn.Module) -> Tensor:
    """The trainable tensor behind `module.weight` (the parametrization's original if masked)."""
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return module.parametrizations.weight.original
    return module.weight


class MaskedLayers:
    """The layers a pruning modifier owns and the statistics its criterion needs."""

    def __init__(self, layers: dict[str, nn.Module], spec: PruningSpec) -> None:
        # Masks (all kept) go on at once, before any DDP wrapping: DDP's gradient hooks do not
        # fire for a parametrization registered after the model was wrapped.
        for module in layers.values():
            if get_mask(module) is None:
                apply_mask(module, torch.ones_like(module.weight, dtype=torch.bool))
        self.layers = layers
        self.spec = spec
        self.needs_grad = CRITERIA.get(spec.criterion).needs_grad
        self.taylor = {n: TaylorAccumulator() for n in layers} if self.needs_grad else {}

    def observe_gradients(self) -> None:
        """Accumulate |w * g| for the Taylor criterion; call after backward, before zero_grad."""
        for n, m in self.layers.items():
            if n in self.taylor:
                self.taylor[n].update(m.weight, _weight_param(m).grad)

    def prune_to(self, target: float, session: Session) -> None:
        """Recompute and apply every owned layer's mask for the model-wide `target`."""
        stats = {n: acc.value() for n, acc in self.taylor.items()}
        masks = compute_masks(self.layers, self.spec, target, stats, session.generator)
        for n, mask in masks.items():
            apply_mask(self.layers[n], mask)
        for acc in self.taylor.values():
            acc.reset()
        session.masks_changed()
