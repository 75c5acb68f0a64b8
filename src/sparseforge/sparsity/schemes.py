"""Mask shapes: each scheme maps (scores, target sparsity) to a bool mask (True = kept) of the
weight's shape and knows nothing of training. Scores are elementwise importances; a scheme that
prunes groups ranks each group by the mean score of its elements."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..registry import Registry

Scheme = Callable[..., Tensor]
SCHEMES: Registry[Scheme] = Registry("sparsity scheme")


def as_matrix(t: Tensor) -> Tensor:
    """The GEMM view of a weight: (out, in * kh * kw), rows = output channels."""
    return t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)


def _n_pruned(n_items: int, sparsity: float) -> int:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
    return min(n_items, int(round(sparsity * n_items)))


def _keep_all_but_lowest(group_scores: Tensor, n_prune: int) -> Tensor:
    """Bool keep-flags for a 1-D score vector with its n_prune lowest entries dropped (stable)."""
    keep = torch.ones_like(group_scores, dtype=torch.bool)
    if n_prune > 0:
        order = torch.argsort(group_scores, stable=True)
        keep[order[:n_prune]] = False
    return keep


@SCHEMES.register("unstructured")
def unstructured(scores: Tensor, sparsity: float) -> Tensor:
    """Drop the individual weights with the lowest scores."""
    flat = scores.reshape(-1)
    return _keep_all_but_lowest(flat, _n_pruned(flat.numel(), sparsity)).reshape(scores.shape)


def nm_layout(t: Tensor) -> Tensor:
    """(out, kh, kw, in) for convolutions so N:M groups run along input channels, as sparse
    tensor cores and channels-last kernels read them; (out, in) for linear weights."""
    return t.permute(0, *range(2, t.dim()), 1) if t.dim() > 2 else t


def nm_unlayout(t: Tensor, shape: torch.Size) -> Tensor:
    if len(shape) <= 2:
        return t.reshape(shape)
    nd = len(shape)
    return t.reshape(shape[0], *shape[2:], shape[1]).permute(0, nd - 1, *range(1, nd - 1))


@SCHEMES.register("nm")
def n_m(scores: Tensor, sparsity: float, n: int = 2, m: int = 4) -> Tensor:
    """Keep the top n of every m consecutive weights along the input dimension. A target below
    1 - n/m keeps more per group (gradual N:M); the group never keeps fewer than n."""
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < n < m, got {n}:{m}")
    in_features = scores.shape[1] if scores.dim() > 1 else scores.numel()
    if in_features % m:
        raise ValueError(
            f"the weight has {in_features} input channels, not divisible by the N:M group size "
            f"{m}; exclude this layer from the modifier (`layers: {{exclude: [NAME]}}`)"
        )
    keep_per_group = min(m, max(n, m - int(round(sparsity * m))))
    grouped = nm_layout(scores).reshape(-1, m)  # (groups, m)
    top = torch.topk(grouped, keep_per_group, dim=1, sorted=False).indices
    mask = torch.zeros_like(grouped, dtype=torch.bool).scatter_(1, top, True)
    return nm_unlayout(mask, scores.shape)


@SCHEMES.register("channel")
def channel(scores: Tensor, sparsity: float) -> Tensor:
    """Drop whole output channels (filters / rows); at least one channel stays."""
    per_channel = as_matrix(scores).mean(dim=1)
    n_prune = min(_n_pruned(per_channel.numel(), sparsity), per_channel.numel() - 1)
    keep = _keep_all_but_lowest(per_channel, n_prune)
    return keep.view(-1, *([1] * (scores.dim() - 1))).expand(scores.shape).clone()


def block_sums(mat: Tensor, bh: int, bw: int) -> Tensor:
    """Sum of each bh x bw tile of a matrix, zero-padding the edges: (ceil(rows/bh), ceil(cols/bw))."""
    padded = torch.nn.functional.pad(mat, (0, -mat.shape[1] % bw, 0, -mat.shape[0] % bh))
    return padded.reshape(padded.shape[0] // bh, bh, padded.shape[1] // bw, bw).sum(dim=(1, 3))


def block_counts(rows: int, cols: int, bh: int, bw: int) -> Tensor:
    """Number of real elements in each bh x bw tile (edge tiles hold fewer)."""
    rs = torch.full((math.ceil(rows / bh),), float(bh))
    cs = torch.full((math.ceil(cols / bw),), float(bw))
    if rows % bh:
        rs[-1] = rows % bh
    if cols % bw:
        cs[-1] = cols % bw
    return rs[:, None] * cs[None, :]


def block_means(mat: Tensor, bh: int, bw: int) -> Tensor:
    """Mean of each bh x bw tile; edge tiles average only their real elements."""
    return block_sums(mat, bh, bw) / block_counts(*mat.shape, bh, bw)


def expand_blocks(block_keep: Tensor, bh: int, bw: int, shape: tuple[int, int]) -> Tensor:
    full = block_keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    return full[: shape[0], : shape[1]]


def check_block(block: tuple[int, int] | list[int]) -> tuple[int, int]:
    bh, bw = (int(b) for b in block)
    if bh < 1 or bw < 1:
        raise ValueError(f"block sizes must be positive, got {tuple(block)}")
    return bh, bw


@SCHEMES.register("block")
def block(scores: Tensor, sparsity: float, block: tuple[int, int] = (4, 4)) -> Tensor:
    """Drop whole bh x bw tiles of the (out, in*kh*kw) matrix; sizes need not divide the
    matrix (edge tiles are smaller)."""
    bh, bw = check_block(block)
    mat = as_matrix(scores)
    means = block_means(mat, bh, bw)
    keep = _keep_all_but_lowest(means.reshape(-1), _n_pruned(means.numel(), sparsity))
    return expand_blocks(keep.view_as(means), bh, bw, tuple(mat.shape)).reshape(scores.shape)


@SCHEMES.register("bcr")
def bcr(scores: Tensor, sparsity: float, block: tuple[int, int] = (8, 8)) -> Tensor:
    """Block-based column-row pruning (GRIM): tile the matrix into r x c blocks and, inside
    each block, drop whole rows and whole columns, so every block compacts to a smaller dense
    tile. Row segments are pruned first (fraction 1 - sqrt(1 - s) of them, ranked across the
    layer), then column segments by the mean score of what remains until the layer reaches s."""
    r, c = check_block(block)
    mat = as_matrix(scores).float()
    rows, cols = mat.shape
    target = _n_pruned(mat.numel(), sparsity)
    keep = torch.ones_like(mat, dtype=torch.bool)
    if target == 0:
        return keep.reshape(scores.shape)

    # Row segments: for each row and each block column, the c (or fewer) weights in that block.
    row_means = block_means(mat, 1, c)  # (rows, ceil(cols/c))
    row_frac = 1.0 - math.sqrt(1.0 - sparsity)
    row_keep = _keep_all_but_lowest(row_means.reshape(-1), _n_pruned(row_means.numel(), row_frac))
    keep &= expand_blocks(row_keep.view_as(row_means), 1, c, (rows, cols))

    # Column segments: for each column and each block row, the r weights in that block.
    kept = keep.float()
    live = block_sums(kept, r, 1)  # kept weights per column segment
    live_sum = block_sums(mat * kept, r, 1)
    seg_means = torch.where(live > 0, live_sum / live.clamp_min(1), torch.full_like(live, -1.0))
    order = torch.argsort(seg_means.reshape(-1), stable=True)
    live_sorted = live.reshape(-1)[order]
    still_needed = target - int(mat.numel() - kept.sum().item())
    col_keep = torch.ones(live.numel(), dtype=torch.bool, device=mat.device)
    if still_needed > 0:
        n_cut = int(torch.searchsorted(live_sorted.cumsum(0), float(still_needed)).item()) + 1
        col_keep[order[:n_cut]] = False
    keep &= expand_blocks(col_keep.view_as(live), r, 1, (rows, cols))
    return keep.reshape(scores.shape)

