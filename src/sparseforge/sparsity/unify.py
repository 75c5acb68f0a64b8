"""Micro-structured weight unification: the (out, in*kh*kw) matrix is cut into bh x bw blocks and
each block is kept, unified (every weight becomes +-m, one shared magnitude, signs kept) or
pruned (m = 0), under a budget of pruned and unified blocks, choosing the least total error."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .masks import Mask, apply_mask
from .schemes import as_matrix, block_sums, check_block, expand_blocks

KEEP, UNIFY, PRUNE = 0, 1, 2


def block_errors(weight: Tensor, block: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Per block (ceil(rows/bh), ceil(cols/bw)): the squared error of pruning it (||w||^2), of
    unifying it (||w||^2 - (sum |w|)^2 / k) and the unifying magnitude m = mean |w|, which
    minimises sum (m - |w_i|)^2 = the error of +-m with the signs of w (zero has sign +)."""
    bh, bw = check_block(block)
    mat = as_matrix(weight.detach()).double()
    sq = block_sums(mat * mat, bh, bw)
    absum = block_sums(mat.abs(), bh, bw)
    count = block_sums(torch.ones_like(mat), bh, bw)  # edge blocks hold fewer weights
    magnitude = absum / count
    return sq, (sq - absum * magnitude).clamp_min(0.0), magnitude


def _smallest_sums(values: list[float], m: int) -> list[float]:
    """out[i] = sum of the m smallest of values[:i] (inf while i < m), for i = 0..len."""
    out = [0.0 if m == 0 else math.inf] * (len(values) + 1)
    if m == 0:
        return out
    heap: list[float] = []  # negated: a max-heap of the m smallest so far
    total = 0.0
    for i, v in enumerate(values):
        if len(heap) < m:
            heapq.heappush(heap, -v)
            total += v
        else:
            total += v + heapq.heappushpop(heap, -v)  # adds v, drops the largest kept
        if len(heap) == m:
            out[i + 1] = total
    return out


def choose_kinds(prune_err: Tensor, unify_err: Tensor, n_prune: int, n_unify: int) -> Tensor:
    """KEEP/UNIFY/PRUNE per block minimising the total error with exactly n_prune pruned and
    n_unify unified blocks. Exact: some optimum prunes only blocks whose extra cost of pruning
    over unifying (d = prune - unify error) is below that of every unified block (else swap),
    so with blocks sorted by d it splits at a position k: prune the n_prune cheapest-to-prune
    before k, unify the n_unify cheapest-to-unify from k on; every k is tried (O(n log n))."""
    b = prune_err.reshape(-1).double().cpu()
    a = unify_err.reshape(-1).double().cpu()
    n = b.numel()
    if n_prune < 0 or n_unify < 0 or n_prune + n_unify > n:
        raise ValueError(f"cannot prune {n_prune} and unify {n_unify} of {n} blocks")
    order = torch.argsort(b - a, stable=True)
    pre = _smallest_sums(b[order].tolist(), n_prune)
    suf = _smallest_sums(a[order].flip(0).tolist(), n_unify)[::-1]
    k = min(range(n + 1), key=lambda i: pre[i] + suf[i])
    kinds = torch.full((n,), KEEP, dtype=torch.int8)
    head, tail = order[:k], order[k:]
    kinds[head[torch.argsort(b[head], stable=True)[:n_prune]]] = PRUNE
    kinds[tail[torch.argsort(a[tail], stable=True)[:n_unify]]] = UNIFY
    return kinds.to(prune_err.device).view(prune_err.shape)


@dataclass
class Unified:
    """A projected weight and how it was made: kinds per block, signs per weight (+-1)."""

    values: Tensor
    kinds: Tensor
    sign: Tensor


def budget(n_blocks: int, prune: float, unify: float) -> tuple[int, int]:
    """Blocks to prune and to unify: round(fraction * n), unified capped by what is left."""
    n_prune = min(n_blocks, int(round(prune * n_blocks)))
    return n_prune, min(n_blocks - n_prune, int(round(unify * n_blocks)))


def project_unify(weight: Tensor, block: tuple[int, int], prune: float, unify: float) -> Unified:
    """The nearest weight (L2) in which round(prune * #blocks) blocks are zero and
    round(unify * #blocks) blocks hold one magnitude with the weight's signs."""
    bh, bw = check_block(block)
    prune_err, unify_err, magnitude = block_errors(weight, (bh, bw))
    kinds = choose_kinds(prune_err, unify_err, *budget(prune_err.numel(), prune, unify))
    mat = as_matrix(weight.detach())
    kind = expand_blocks(kinds, bh, bw, tuple(mat.shape))
    sign = torch.where(mat >= 0, 1, -1).to(torch.int8)
    shared = expand_blocks(magnitude.to(mat.dtype), bh, bw, tuple(mat.shape)) * sign
    values = torch.where(kind == KEEP, mat, torch.where(kind == UNIFY, shared, 0.0))
    return Unified(values.reshape(weight.shape), kinds, sign.reshape(weight.shape))


class UnifiedMask(Mask):
    """Mask parametrization that also unifies blocks: a unified block reads as sign * m with
    m = mean(sign * w) over the block (one number, learned through the mean). Only `mask` is
    saved; kinds and signs are not, so the state dict loads into a plainly masked model."""

    def __init__(self, mask: Tensor, kinds: Tensor, sign: Tensor, block: tuple[int, int]) -> None:
        super().__init__(mask)
        self.block = check_block(block)
        rows, cols = as_matrix(mask).shape
        unified = expand_blocks(kinds == UNIFY, *self.block, (rows, cols)).reshape(mask.shape)
        self.register_buffer("kinds", kinds.to(torch.int8), persistent=False)
        self.register_buffer("sign", sign.to(torch.int8), persistent=False)
        self.register_buffer("unified", unified, persistent=False)

    def magnitudes(self, weight: Tensor) -> Tensor:
        """The shared magnitude of every block, (ceil(rows/bh), ceil(cols/bw))."""
        return self._magnitudes(as_matrix(weight * self.mask.to(weight.dtype)))

    def _magnitudes(self, mat: Tensor) -> Tensor:
        signed = mat * as_matrix(self.sign).to(mat.dtype)
        return block_sums(signed, *self.block) / block_sums(torch.ones_like(mat), *self.block)

    def forward(self, weight: Tensor) -> Tensor:
        mat = as_matrix(weight * self.mask.to(weight.dtype))  # (rows, cols)
        shared = expand_blocks(self._magnitudes(mat), *self.block, tuple(mat.shape))
        shared = shared * as_matrix(self.sign).to(weight.dtype)
        out = torch.where(as_matrix(self.unified), shared, mat).reshape(weight.shape)
        if weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)  # keep the weight's layout
        return out


def get_unified(module: nn.Module) -> UnifiedMask | None:
    """The UnifiedMask on `module.weight`, or None."""
    plist = getattr(module, "parametrizations", {})
    if "weight" not in plist:
        return None
    return next((p for p in plist["weight"] if isinstance(p, UnifiedMask)), None)


def apply_unified(module: nn.Module, kinds: Tensor, sign: Tensor, block: tuple[int, int]) -> None:
    """Put `kinds` (per block) on `module.weight` through the mask engine: pruned blocks are
    masked (and zeroed), unified blocks read as one magnitude; the stored weight is synced."""
    bh, bw = check_block(block)
    rows, cols = as_matrix(module.weight).shape
    mask = expand_blocks(kinds != PRUNE, bh, bw, (rows, cols)).reshape(module.weight.shape)
    apply_mask(module, mask)
    plist = module.parametrizations["weight"]
    index = next(i for i, p in enumerate(plist) if isinstance(p, Mask))
    device = plist.original.device
    plist[index] = UnifiedMask(mask.to(device), kinds.to(device), sign.to(device), (bh, bw))
    sync_unified(module)


@torch.no_grad()
def sync_unified(module: nn.Module) -> None:
    """Write each unified block's shared value into the stored weight, so that the state dict
    alone (e.g. loaded into a plainly masked model) holds +-m in every unified block."""
    p = get_unified(module)
    if p is not None:
        original = module.parametrizations["weight"].original
        original.copy_(torch.where(p.unified, module.weight, original))


def shared_values(module: nn.Module) -> tuple[Tensor, Tensor]:
    """(kinds, magnitudes) per block of a unified module: what a deployment stores, one number
    per unified block (magnitudes of other blocks are 0)."""
    p = get_unified(module)
    if p is None:
        raise ValueError(
            "this module's weight is not unified (no UnifiedMask); run apply_unified first"
        )
    with torch.no_grad():
        mags = p.magnitudes(module.parametrizations["weight"].original)
    return p.kinds.clone(), torch.where(p.kinds == UNIFY, mags, torch.zeros_like(mags))
