"""Group importance: a score per removable unit, aggregated over every parameter slice of the
unit (a conv's filter, the matching BN entries, the next layer's input columns). Each slice
tensor's per-index scores are divided by their mean first, so layers of different scale are
comparable when ranking globally."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..registry import Registry
from .dependency import DependencyGraph

# (tensor, dim, owner module) -> one score per index of dim (higher: more important), or None
# when the criterion does not read that tensor
ImportanceFn = Callable[[Tensor, int, nn.Module], "Tensor | None"]
IMPORTANCE: Registry[ImportanceFn] = Registry("channel importance")


def _per_index(t: Tensor, dim: int) -> Tensor:
    """Sum over every dim but `dim` (torch's sum over an empty dim list would sum everything)."""
    other = [d for d in range(t.dim()) if d != dim]
    return t.sum(dim=other) if other else t


def _norm(t: Tensor, dim: int, p: int) -> Tensor:
    return _per_index(t.detach().abs().pow(p), dim).float()


@IMPORTANCE.register("l1")
def l1(t: Tensor, dim: int, owner: nn.Module) -> Tensor | None:
    """Sum of |w| over the slice (Li et al. 2017)."""
    return _norm(t, dim, 1) if t.dim() > 1 or _is_bias_like(owner) else None


@IMPORTANCE.register("l2")
def l2(t: Tensor, dim: int, owner: nn.Module) -> Tensor | None:
    """Euclidean norm of the slice."""
    return _norm(t, dim, 2).sqrt() if t.dim() > 1 or _is_bias_like(owner) else None


@IMPORTANCE.register("bn_scale")
def bn_scale(t: Tensor, dim: int, owner: nn.Module) -> Tensor | None:
    """|gamma| of the BatchNorm that follows the channel (network slimming, Liu et al. 2017);
    units without a BatchNorm get no score from it and rank by their other slices' L1."""
    if isinstance(owner, nn.modules.batchnorm._NormBase) and t is owner.weight:
        return t.detach().abs().float()
    return None


@IMPORTANCE.register("taylor")
def taylor(t: Tensor, dim: int, owner: nn.Module) -> Tensor | None:
    """First-order Taylor |sum(w * dL/dw)| over the slice (Molchanov et al. 2019); needs the
    gradients of a backward pass on real data."""
    if t.grad is None:
        raise ValueError("importance 'taylor' needs gradients: run loss.backward() on a batch "
                         "of real data before pruning")
    return _per_index(t.detach() * t.grad, dim).abs().float()


@IMPORTANCE.register("fpgm")
def fpgm(t: Tensor, dim: int, owner: nn.Module) -> Tensor | None:
    """Distance of each filter to all others (He et al. 2019, geometric median): a filter
    close to the median is redundant. Read on output filters only."""
    if dim != 0 or t.dim() < 2:
        return None
    flat = t.detach().flatten(1).float()
    return torch.cdist(flat, flat).sum(1)


def _is_bias_like(owner: nn.Module) -> bool:
    return isinstance(owner, nn.modules.batchnorm._NormBase)


def unit_scores(model: nn.Module, graph: DependencyGraph, criterion: str = "l2") -> dict[int, float]:
    """Score of every prunable unit under `criterion` (a name in IMPORTANCE): the mean over
    the unit's slices of the normalized per-slice score. Under 'bn_scale', units without a
    BatchNorm fall back to L1."""
    scores = _mean_over_slices(model, graph, IMPORTANCE.get(criterion))
    if criterion == "bn_scale":
        scores = {**_mean_over_slices(model, graph, l1), **scores}
    return {u: scores.get(u, 0.0) for u in graph.units}


def _mean_over_slices(model: nn.Module, graph: DependencyGraph, fn: ImportanceFn) -> dict[int, float]:
    tensors = dict(model.named_parameters())
    total: dict[int, float] = defaultdict(float)
    count: dict[int, int] = defaultdict(int)
    for (name, dim), units in graph.slices.items():
        if name not in tensors or not (units >= 0).any():
            continue
        score = fn(tensors[name], dim, model.get_submodule(name.rpartition(".")[0]))
        if score is None:
            continue
        score = score.cpu().numpy().astype(np.float64)
        score = score / (score.mean() + 1e-12)
        for u in np.unique(units[units >= 0]):
            total[int(u)] += float(score[units == u].mean())
            count[int(u)] += 1
    return {u: total[u] / count[u] for u in total}
