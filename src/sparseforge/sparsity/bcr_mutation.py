"""Drop/grow for BCR (block-based column-row) masks at an exact nonzero budget, for dynamic
sparse training. In every r x c block a BCR mask keeps a set of rows times a set of columns,
so it is two segment masks: rows (R, ceil(C/c)), one bit per row inside a block column, and
cols (ceil(R/r), C), one bit per column inside a block row; weight (i, j) is kept when
rows[i, j // c] and cols[i // r, j]. A row segment holds as many weights as its block keeps
columns, so swapping row segments of equal size with the columns fixed (then column segments
of equal size with the rows fixed) keeps the nonzero count exact, where swapping arbitrary
segments would need a subset-sum search."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .mutation import drop_lowest, grow_by_score, grow_random
from .schemes import as_matrix, block_sums, check_block


@dataclass(frozen=True)
class BCRSegments:
    """The segment masks of one layer's BCR mask (see the module docstring)."""

    rows: Tensor  # (R, ceil(C / c)) bool
    cols: Tensor  # (ceil(R / r), C) bool
    block: tuple[int, int]
    shape: torch.Size  # the weight's shape; the mask lives on its (R, C) GEMM view

    @classmethod
    def random(cls, shape: torch.Size | tuple[int, ...], block: tuple[int, int], sparsity: float,
               generator: torch.Generator) -> BCRSegments:
        """Keep sqrt(1 - sparsity) of the row segments and of the column segments, drawn
        independently at random, so the layer starts near `sparsity` (the two draws multiply)
        and a block with no kept row still has kept columns to grow rows into."""
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
        r, c = check_block(block)
        rows, cols = as_matrix(torch.empty(tuple(shape), device="meta")).shape
        keep = math.sqrt(1.0 - sparsity)

        def draw(n_rows: int, n_cols: int) -> Tensor:
            n = n_rows * n_cols
            kept = torch.zeros(n, dtype=torch.bool)
            kept[torch.randperm(n, generator=generator)[: max(1, round(keep * n))]] = True
            return kept.reshape(n_rows, n_cols)

        return cls(draw(rows, math.ceil(cols / c)), draw(math.ceil(rows / r), cols), (r, c),
                   torch.Size(shape))

    def _row_plane(self) -> Tensor:  # (R, C): rows[i, j // c]
        return self.rows.repeat_interleave(self.block[1], 1)[:, : self.cols.shape[1]]

    def _col_plane(self) -> Tensor:  # (R, C): cols[i // r, j]
        return self.cols.repeat_interleave(self.block[0], 0)[: self.rows.shape[0]]

    def mask(self) -> Tensor:
        """The element mask, shaped like the weight."""
        return (self._row_plane() & self._col_plane()).reshape(self.shape)

    def nonzeros(self) -> int:
        return int(self.mask().sum())

    def row_sizes(self) -> Tensor:
        """Weights each row segment holds: the kept columns of its block, (R, ceil(C / c))."""
        return block_sums(self._col_plane().float(), 1, self.block[1]).long()

    def col_sizes(self) -> Tensor:
        """Weights each column segment holds: the kept rows of its block, (ceil(R / r), C)."""
        return block_sums(self._row_plane().float(), self.block[0], 1).long()

    def mutate(self, drop_scores: Tensor, rate: float, generator: torch.Generator,
               grow_scores: Tensor | None = None) -> BCRSegments:
        """Swap `rate` of the kept row segments of each size (lowest mean drop score out,
        random or highest mean grow score in), then the same for column segments. Scores are
        per weight, shaped like it; the nonzero count is unchanged."""
        drop = as_matrix(drop_scores).float().cpu()
        grow = None if grow_scores is None else as_matrix(grow_scores).float().cpu()
        rows = _swap(self.rows, self.row_sizes(), self._col_plane(), drop, grow, (1, self.block[1]),
                     rate, generator)
        half = BCRSegments(rows, self.cols, self.block, self.shape)
        cols = _swap(self.cols, half.col_sizes(), half._row_plane(), drop, grow,
                     (self.block[0], 1), rate, generator)
        return BCRSegments(rows, cols, self.block, self.shape)


def _swap(units: Tensor, sizes: Tensor, other: Tensor, drop: Tensor, grow: Tensor | None,
          tile: tuple[int, int], rate: float, generator: torch.Generator) -> Tensor:
    """One phase: per size class, drop round(rate x kept) segments and grow as many. A
    segment's score is the mean over the weights it holds (those `other` keeps)."""
    held = other.float()
    count = sizes.clamp_min(1).float()
    drop_mean = block_sums(drop * held, *tile) / count
    grow_mean = None if grow is None else block_sums(grow * held, *tile) / count
    for size in sizes.unique().tolist():
        if size == 0:  # holds no weight in either state: moving it changes nothing
            continue
        where = sizes == size
        n = round(rate * int((units & where).sum()))
        if n == 0:
            continue
        units = drop_lowest(units, drop_mean, n, where)
        if grow_mean is None:
            units = grow_random(units, n, generator, where)
        else:
            units = grow_by_score(units, grow_mean, n, where)
    return units
