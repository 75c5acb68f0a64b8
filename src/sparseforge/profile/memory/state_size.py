"""What the weights, their gradients and the optimizer state take now (masked dense, as trained)
and what they would take stored compactly from the masks: values of the kept entries for each
of weight, gradient and every per-weight optimizer buffer, plus one shared bit map per mask."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ...sparsity.masks import get_mask, masked_modules


@dataclass(frozen=True)
class StateSize:
    dense_bytes: int  # weights + gradients + optimizer state, as trained
    compact_bytes: int  # the same with every masked tensor stored as bit map + kept values
    mask_bytes: int  # the masks themselves (kept beside the weights while training)
    density: float  # kept fraction of the masked weights

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _param_of(module: nn.Module) -> nn.Parameter:
    parametrized = getattr(module, "parametrizations", None)
    return parametrized.weight.original if parametrized is not None else module.weight


def training_state_size(model: nn.Module, optimizer: torch.optim.Optimizer) -> StateSize:
    """Sizes over every parameter; masked weights (those with a sparseforge mask) count their
    kept entries only in `compact_bytes`. A parameter's copies are itself, its gradient (when
    it has one) and each optimizer buffer of its shape."""
    masked = {id(_param_of(m)): get_mask(m) for _, m in masked_modules(model)}
    dense = compact = mask_bytes = kept = total = 0
    for p in model.parameters():
        state = optimizer.state.get(p, {})
        copies = 1 + (p.grad is not None) + sum(
            1 for v in state.values() if torch.is_tensor(v) and v.shape == p.shape
        )
        size = p.numel() * p.element_size()
        dense += copies * size
        mask = masked.get(id(p))
        if mask is None:
            compact += copies * size
            continue
        nnz = int(torch.count_nonzero(mask))
        kept, total = kept + nnz, total + mask.numel()
        compact += copies * nnz * p.element_size() + (mask.numel() + 7) // 8
        mask_bytes += mask.numel() * mask.element_size()
    return StateSize(dense, compact, mask_bytes, kept / total if total else 1.0)
