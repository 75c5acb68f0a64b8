"""Mask mutation for dynamic sparse training: drop the lowest-scored active entries, grow
inactive ones by score or at random, over single weights or whole tiles; plus the ERK layer
densities RigL starts from and the Elastic Mutation decay. No modules, no training state."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .schemes import as_matrix, block_counts, block_sums, check_block, expand_blocks


def _pool(mask: Tensor, where: Tensor | None) -> Tensor:
    if mask.dtype != torch.bool:
        raise TypeError(f"masks are bool tensors (True = kept), got {mask.dtype}")
    if where is None:
        return torch.ones_like(mask)
    if where.shape != mask.shape:
        raise ValueError(f"`where` shape {tuple(where.shape)} != mask shape {tuple(mask.shape)}")
    return where.to(torch.bool)


def _check_n(n: int, available: int, what: str) -> None:
    if n < 0:
        raise ValueError(f"cannot {what} a negative number of entries ({n})")
    if n > available:
        raise ValueError(f"cannot {what} {n} entries: only {available} are eligible")


def _turn(mask: Tensor, order: Tensor, n: int, value: bool) -> Tensor:
    out = mask.clone().reshape(-1)
    out[order[:n].to(mask.device)] = value
    return out.reshape(mask.shape)


def drop_lowest(mask: Tensor, scores: Tensor, n: int, where: Tensor | None = None) -> Tensor:
    """A copy of `mask` with the n active entries (inside `where`) of lowest score turned off;
    ties go to the lower flat index."""
    eligible = (mask & _pool(mask, where)).reshape(-1)
    _check_n(n, int(eligible.sum()), "drop")
    ranked = torch.where(eligible, scores.reshape(-1).float(), torch.inf)
    return _turn(mask, torch.argsort(ranked, stable=True), n, False)


def grow_by_score(mask: Tensor, scores: Tensor, n: int, where: Tensor | None = None) -> Tensor:
    """A copy of `mask` with the n inactive entries (inside `where`) of highest score turned on;
    ties go to the lower flat index."""
    eligible = (~mask & _pool(mask, where)).reshape(-1)
    _check_n(n, int(eligible.sum()), "grow")
    ranked = torch.where(eligible, scores.reshape(-1).float(), -torch.inf)
    return _turn(mask, torch.argsort(ranked, descending=True, stable=True), n, True)


def grow_random(
    mask: Tensor, n: int, generator: torch.Generator, where: Tensor | None = None
) -> Tensor:
    """A copy of `mask` with n inactive entries (inside `where`) turned on, drawn uniformly with
    `generator` (a CPU generator: the same seed gives the same entries on every device)."""
    eligible = torch.nonzero((~mask & _pool(mask, where)).reshape(-1).cpu()).reshape(-1)
    _check_n(n, eligible.numel(), "grow")
    chosen = eligible[torch.randperm(eligible.numel(), generator=generator)[:n]]
    return _turn(mask, chosen, n, True)


class Units:
    """A layer's mask seen as the units a mutation moves: single weights (`block=None`) or
    whole bh x bw tiles of the (out, in*kh*kw) matrix. Ragged edge tiles hold fewer weights,
    so units fall in size classes; swapping units of one class keeps the nonzero count exact."""

    def __init__(self, shape: Sequence[int], block: Sequence[int] | None = None) -> None:
        self.shape = torch.Size(shape)
        self.block = None if block is None else check_block(tuple(block))
        probe = as_matrix(torch.empty(self.shape, device="meta"))
        self.matrix = (probe.shape[0], probe.shape[1])
        # elements per tile (None for single weights: one class, no per-weight tensor kept)
        self.sizes: Tensor | None = None
        self.classes = [1]
        if self.block is not None:
            self.sizes = block_counts(*self.matrix, *self.block).reshape(-1).long()
            self.classes = sorted(set(self.sizes.tolist()))

    def of_class(self, size: int, like: Tensor) -> Tensor | None:
        """Bool per unit of `size` elements on `like`'s device; None when all units are alike."""
        if len(self.classes) == 1:
            return None
        return (self.sizes == size).to(like.device)

    def count(self, units: Tensor, size: int) -> int:
        """Kept units of `size` elements."""
        where = self.of_class(size, units)
        return int(units.sum() if where is None else (units & where).sum())

    def total(self, size: int) -> int:
        """All units of `size` elements."""
        return self.shape.numel() if self.sizes is None else int((self.sizes == size).sum())

    def units(self, mask: Tensor) -> Tensor:
        """1-D bool per unit; a tile must be wholly kept or wholly pruned."""
        if self.block is None:
            return mask.reshape(-1).clone()
        kept = block_sums(as_matrix(mask).float(), *self.block).reshape(-1).cpu()
        partial = (kept > 0) & (kept < self.sizes)
        if partial.any():
            raise ValueError(
                f"the mask is not made of whole {self.block[0]}x{self.block[1]} tiles "
                f"({int(partial.sum())} tiles are partly kept); build it with the block scheme"
            )
        return (kept > 0).to(mask.device)

    def pool(self, scores: Tensor) -> Tensor:
        """1-D float score per unit: the element score, or a tile's mean over its elements."""
        if self.block is None:
            return scores.reshape(-1).float()
        sums = block_sums(as_matrix(scores).float(), *self.block).reshape(-1)
        return sums / self.sizes.to(sums.device)

    def expand(self, units: Tensor) -> Tensor:
        """The element mask (the weight's shape) of a 1-D unit mask."""
        if self.block is None:
            return units.reshape(self.shape).clone()
        bh, bw = self.block
        rows, cols = math.ceil(self.matrix[0] / bh), math.ceil(self.matrix[1] / bw)
        grid = units.reshape(rows, cols)
        return expand_blocks(grid, bh, bw, self.matrix).reshape(self.shape).clone()

    def nonzeros(self, units: Tensor) -> int:
        """Elements kept by a unit mask."""
        if self.sizes is None:
            return int(units.sum())
        return int(self.sizes.to(units.device)[units].sum())


def drop_lowest_groups(
    mask: Tensor, scores: Tensor, n: int, block: Sequence[int], where: Tensor | None = None
) -> Tensor:
    """`drop_lowest` over whole tiles ranked by mean score; `where` is per tile (flat)."""
    u = Units(mask.shape, block)
    return u.expand(drop_lowest(u.units(mask), u.pool(scores), n, where))


def grow_groups_by_score(
    mask: Tensor, scores: Tensor, n: int, block: Sequence[int], where: Tensor | None = None
) -> Tensor:
    """`grow_by_score` over whole tiles ranked by mean score; `where` is per tile (flat)."""
    u = Units(mask.shape, block)
    return u.expand(grow_by_score(u.units(mask), u.pool(scores), n, where))


def grow_groups_random(
    mask: Tensor, n: int, block: Sequence[int], generator: torch.Generator,
    where: Tensor | None = None,
) -> Tensor:
    """`grow_random` over whole tiles; `where` is per tile (flat)."""
    u = Units(mask.shape, block)
    return u.expand(grow_random(u.units(mask), n, generator, where))


def erk_densities(
    shapes: Mapping[str, Sequence[int]], density: float, fixed: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities (Evci et al. 2020, RigL): a layer's density is proportional
    to sum(shape) / prod(shape), scaled so the model keeps `density` of its weights. Layers the
    scale would push above 1 become dense and the rest is rescaled; `fixed` layers keep theirs."""
    fixed = dict(fixed or {})
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / numel[n] for n, s in shapes.items()}
    budget = density * sum(numel.values()) - sum((1 - fixed[n]) * numel[n] for n in fixed)
    if budget < 0:
        raise ValueError(
            "the overrides keep more weights than the whole sparsity budget allows; "
            "raise their sparsity or lower the model's"
        )
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in fixed and n not in dense]
        left = budget - sum(numel[n] for n in dense)
        weight = sum(raw[n] * numel[n] for n in rest)
        scale = max(left, 0.0) / weight if weight > 0 else 0.0
        top = max((raw[n] for n in rest), default=0.0)
        if not rest or scale * top <= 1.0:
            break
        dense |= {n for n in rest if raw[n] == top}
    out = {n: 1.0 - s for n, s in fixed.items()}
    out.update({n: 1.0 for n in dense})
    out.update({n: scale * raw[n] for n in rest})
    return {n: out[n] for n in shapes}


@dataclass(frozen=True)
class ElasticDecay:
    """Elastic Mutation: the factor in [0, 1] on p0 (or on grow_extra) at a step. 1 until
    `start`; then cosine down, or `levels - 1` equal steps (L-1)/L .. 1/L; 0 from `stop`."""

    kind: str
    start: int
    stop: int
    levels: int = 2

    def __call__(self, step: int) -> float:
        if step >= self.stop:
            return 0.0
        if self.kind == "constant" or step < self.start:
            return 1.0
        progress = (step - self.start) / (self.stop - self.start)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return (self.levels - 1 - math.floor((self.levels - 1) * progress)) / self.levels
