"""PatDNN kernel patterns: every 3x3 kernel keeps 4 of its 9 weights in one shape of a small
library (the centre always kept), chosen per kernel by the largest kept score; connectivity
pruning then removes whole kernels (input-output channel pairs) with the smallest kept score."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .schemes import SCHEMES, _keep_all_but_lowest

CENTRE = 4
KEPT_PER_KERNEL = 4
# Positions in the row-major 3x3 kernel (0 1 2 / 3 4 5 / 6 7 8). Our choice: the four 2x2
# squares that contain the centre, then the four T shapes (centre + three of its four arms).
DEFAULT_LIBRARY: tuple[tuple[int, int, int, int], ...] = (
    (0, 1, 3, 4), (1, 2, 4, 5), (3, 4, 6, 7), (4, 5, 7, 8),
    (1, 3, 4, 5), (1, 4, 5, 7), (3, 4, 5, 7), (1, 3, 4, 7),
)
# Every 4-of-9 shape that keeps the centre (C(8, 3) = 56), in lexicographic order.
ALL_PATTERNS: tuple[tuple[int, ...], ...] = tuple(
    tuple(sorted((CENTRE, *rest))) for rest in itertools.combinations((0, 1, 2, 3, 5, 6, 7, 8), 3)
)

Library = Sequence[Sequence[int]]


def kernels(t: Tensor) -> Tensor:
    """A (out, in, 3, 3) weight or score tensor as rows of 9: (out * in, 9)."""
    if t.dim() != 4 or tuple(t.shape[2:]) != (3, 3):
        raise ValueError(
            f"the pattern scheme needs 3x3 convolution kernels, got a weight of shape "
            f"{tuple(t.shape)}; exclude this layer from the modifier "
            "(`layers: {exclude: [NAME]}`)"
        )
    return t.reshape(-1, 9)


def library_tensor(library: Library, device: torch.device | None = None) -> Tensor:
    """Bool (P, 9): row p marks the positions pattern p keeps."""
    lib = torch.zeros(len(library), 9, dtype=torch.bool, device=device)
    for p, positions in enumerate(library):
        lib[p, list(positions)] = True
    return lib


def derive_library(source: nn.Module | Iterable[Tensor], k: int = 8) -> list[tuple[int, ...]]:
    """The k most frequent kernel shapes (centre + the 3 largest-magnitude other positions) over
    every 3x3 kernel of a trained model (its Conv2d weights) or of the given tensors. Ties go to
    the lexicographically first shape; fewer than k distinct shapes are topped up from
    DEFAULT_LIBRARY, then from the remaining shapes in lexicographic order."""
    if not 1 <= k <= len(ALL_PATTERNS):
        raise ValueError(f"a library holds 1..{len(ALL_PATTERNS)} patterns, got k={k}")
    if isinstance(source, nn.Module):
        source = [
            m.weight for m in source.modules()
            if isinstance(m, nn.Conv2d) and tuple(m.weight.shape[2:]) == (3, 3)
        ]
    counts = torch.zeros(512, dtype=torch.int64)
    for t in source:
        mags = kernels(t.detach().abs().float().cpu()).clone()  # (N, 9)
        mags[:, CENTRE] = -1.0  # the centre is always kept; rank only the other 8
        top = torch.topk(mags, 3, dim=1).indices  # (N, 3)
        codes = (1 << CENTRE) + (1 << top).sum(1)
        counts += torch.bincount(codes, minlength=512)
    count = {p: int(counts[sum(1 << i for i in p)]) for p in ALL_PATTERNS}
    ranked = sorted((p for p in ALL_PATTERNS if count[p] > 0), key=lambda p: -count[p])
    fill = [p for p in (*DEFAULT_LIBRARY, *ALL_PATTERNS) if p not in ranked]
    return list(dict.fromkeys(ranked + fill))[:k]


def resolve_library(scores: Tensor, library: str | Library, library_size: int) -> Library:
    """The pattern list a scheme call uses: the default, an explicit list, or (`derive`) the
    most frequent shapes of these scores (a per-layer library)."""
    if library == "default":
        return DEFAULT_LIBRARY
    if library == "derive":
        return derive_library([scores], library_size)
    return library


def best_patterns(scores: Tensor, library: Library) -> tuple[Tensor, Tensor]:
    """For each kernel, the index of the library pattern with the largest kept score sum (the
    first on ties) and that sum: two (out * in,) tensors."""
    lib = library_tensor(library, scores.device).to(scores.dtype)  # (P, 9)
    kept = kernels(scores) @ lib.T  # (N, P)
    best = kept.argmax(dim=1)
    return best, kept.gather(1, best[:, None]).squeeze(1)


def kernels_to_remove(n_kernels: int, sparsity: float, connectivity: float | None) -> int:
    """Kernels connectivity pruning removes: round(connectivity * n), or, without a fraction,
    as many as bring the layer from 5/9 to `sparsity` (each removed kernel adds 4 zeros)."""
    if connectivity is not None:
        return min(n_kernels, int(round(connectivity * n_kernels)))
    needed = n_kernels * (9 * sparsity - (9 - KEPT_PER_KERNEL)) / KEPT_PER_KERNEL
    return min(n_kernels, max(0, int(round(needed))))


@SCHEMES.register("pattern")
def pattern(
    scores: Tensor,
    sparsity: float,
    library: str | Library = "default",
    library_size: int = 8,
    connectivity: float | None = None,
) -> Tensor:
    """Each 3x3 kernel keeps its best library pattern, then the kernels with the smallest kept
    score are removed whole. Any target above 0 prunes at least 5/9; at 0 everything is kept."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
    if sparsity == 0.0:
        return torch.ones_like(scores, dtype=torch.bool)
    patterns = resolve_library(scores, library, library_size)
    best, kept_score = best_patterns(scores, patterns)
    mask = library_tensor(patterns, scores.device)[best]  # (N, 9)
    n_remove = kernels_to_remove(len(best), sparsity, connectivity)
    mask &= _keep_all_but_lowest(kept_score, n_remove)[:, None]
    return mask.reshape(scores.shape)


def kernel_patterns(mask: Tensor, library: Library) -> Tensor:
    """Per kernel of a pattern mask: the index of the library pattern it equals, -1 for an
    empty (connectivity-pruned) kernel, -2 for a kernel that matches neither."""
    rows = kernels(mask).bool()  # (N, 9)
    lib = library_tensor(library, mask.device)  # (P, 9)
    equal = (rows[:, None, :] == lib[None, :, :]).all(2)  # (N, P)
    index = torch.where(equal.any(1), equal.int().argmax(1), -2)
    return torch.where(rows.any(1), index, -1)
