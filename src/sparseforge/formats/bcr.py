"""BCR storage (GRIM): each r x c block of the GEMM matrix as its kept rows, kept columns and
the dense (kept rows x kept cols) tile, blocks reordered so equal tile shapes are contiguous
and a kernel can run each shape as one batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from ..sparsity.schemes import check_block
from .base import (
    TensorState,
    gemm_shape,
    index_dtype,
    kept_entries,
    small_index_dtype,
    tensor_bytes,
)
from .bsr import from_tiles, to_tiles


class TileGroup(NamedTuple):
    """The stored blocks sharing one tile shape (kr, kc), as a kernel would batch them."""

    kept_rows: int
    kept_cols: int
    block_ids: Tensor  # (nb,), block id = block_row * block_cols + block_col
    rows: Tensor  # (nb, kr), kept row positions inside each block, ascending
    cols: Tensor  # (nb, kc), kept column positions inside each block, ascending
    tiles: Tensor  # (nb, kr, kc), the compacted dense tiles


def _cross(rows: Tensor, cols: Tensor) -> Tensor:
    """(nb, r) x (nb, c) kept flags -> (nb, r, c): the kept-rows x kept-cols product per block."""
    return rows[:, :, None] & cols[:, None, :]


def _not_bcr_error(
    kept: Tensor, cross: Tensor, grid: tuple[int, int], block: tuple[int, int], masked: bool
) -> ValueError:
    """Name the first block (and entry) where the kept entries are not a rows x cols product."""
    b, i, j = (int(v) for v in (cross & ~kept).nonzero()[0])
    (br, bc), (r, c) = divmod(b, grid[1]), block
    what = "the mask is" if masked else "the weight's nonzeros are"
    fix = (
        "build the mask with the `bcr` scheme"
        if masked
        else "prune it with the `bcr` scheme first; if a kept weight is exactly 0, pass its mask "
        "(`mask=`)"
    )
    row, col = br * r + i, bc * c + j
    return ValueError(
        f"{what} not BCR-shaped for block {block}: in block ({br}, {bc}) of the GEMM "
        f"view, row {row} and column {col} both hold kept entries but entry ({row}, {col}) is "
        f"not kept, so the block is not a kept-rows x kept-columns tile; {fix}"
    )


@dataclass(frozen=True, eq=False)
class BCR(TensorState):
    """Blocks tile the GEMM matrix row-major (ragged edges padded, `shape` keeps the true size);
    only blocks with kept entries are stored, in `block_ids` order: grouped by tile shape
    (kr, kc) ascending, by block id within a group. Group g holds stored blocks
    group_ptr[g]:group_ptr[g+1]; row/col indices and tile values (row-major) are concatenated."""

    shape: tuple[int, ...]  # the weight's own shape
    block: tuple[int, int]  # (r, c)
    block_ids: Tensor  # (nstored,), the stored order = the permutation to_dense inverts
    group_shapes: Tensor  # (G, 2), (kr, kc) of each group
    group_ptr: Tensor  # (G + 1,)
    row_indices: Tensor  # (sum kr,), uint8 for r <= 256
    col_indices: Tensor  # (sum kc,), uint8 for c <= 256
    values: Tensor  # (sum kr * kc,), the weight's dtype

    KIND: ClassVar[int] = 4
    FIELDS: ClassVar[tuple[str, ...]] = (
        "shape", "block", "block_ids", "group_shapes", "group_ptr", "row_indices", "col_indices",
        "values",
    )

    @classmethod
    def from_dense(
        cls, weight: Tensor, block: tuple[int, int] = (8, 8), mask: Tensor | None = None
    ) -> BCR:
        """Kept rows/cols of a block are those with any kept entry (the nonzeros, or `mask`);
        the kept entries must be exactly their cross product, else an error names the block."""
        r, c = check_block(block)
        weight = weight.detach()
        rows, cols = gemm_shape(tuple(weight.shape))
        kept_mat = kept_entries(weight, mask).reshape(rows, cols)
        grid_tiles = to_tiles(kept_mat, r, c)  # (nbr, nbc, r, c)
        grid = (grid_tiles.shape[0], grid_tiles.shape[1])
        kept = grid_tiles.reshape(-1, r, c)  # (nb, r, c)
        row_kept, col_kept = kept.any(2), kept.any(1)  # (nb, r), (nb, c)
        cross = _cross(row_kept, col_kept)  # (nb, r, c)
        if not torch.equal(cross, kept):
            raise _not_bcr_error(kept, cross, grid, (r, c), mask is not None)

        kr, kc = row_kept.sum(1), col_kept.sum(1)  # (nb,)
        key = kr * (c + 1) + kc  # orders by (kr, kc)
        stored = (kr > 0).nonzero()[:, 0]
        ids = stored[torch.argsort(key[stored], stable=True)]  # (nstored,)
        keys, counts = torch.unique_consecutive(key[ids], return_counts=True)  # (G,)
        itype = index_dtype(kept.numel())
        group_shapes = torch.stack([keys // (c + 1), keys % (c + 1)], dim=1).to(itype)  # (G, 2)
        group_ptr = torch.zeros(len(keys) + 1, dtype=itype, device=weight.device)
        group_ptr[1:] = counts.cumsum(0)
        tiles = to_tiles(weight.reshape(rows, cols), r, c).reshape(-1, r, c)[ids]  # (nstored, r, c)
        return cls(
            tuple(weight.shape), (r, c), ids.to(itype), group_shapes, group_ptr,
            row_kept[ids].nonzero()[:, 1].to(small_index_dtype(r)),
            col_kept[ids].nonzero()[:, 1].to(small_index_dtype(c)),
            tiles[cross[ids]],  # row-major within each block = its (kr, kc) tile flattened
        )

    def _per_block(self, column: int) -> Tensor:
        """kr (column 0) or kc (column 1) of every stored block: (nstored,)."""
        sizes = (self.group_ptr[1:] - self.group_ptr[:-1]).long()
        return torch.repeat_interleave(self.group_shapes[:, column].long(), sizes)

    def groups(self) -> list[TileGroup]:
        """The stored blocks split by tile shape, views shaped for batched kernels."""
        out, row_at, col_at, val_at = [], 0, 0, 0
        for g, (kr, kc) in enumerate(self.group_shapes.tolist()):
            lo, hi = int(self.group_ptr[g]), int(self.group_ptr[g + 1])
            nb = hi - lo
            out.append(TileGroup(
                kr, kc, self.block_ids[lo:hi],
                self.row_indices[row_at:row_at + nb * kr].reshape(nb, kr),
                self.col_indices[col_at:col_at + nb * kc].reshape(nb, kc),
                self.values[val_at:val_at + nb * kr * kc].reshape(nb, kr, kc),
            ))
            row_at, col_at, val_at = row_at + nb * kr, col_at + nb * kc, val_at + nb * kr * kc
        return out

    def to_dense(self) -> Tensor:
        """The weight in its own shape: each tile scattered to its kept rows x cols, blocks put
        back at their ids (undoing the reorder), padding cropped."""
        (r, c), (nbr, nbc), dev = self.block, self.grid, self.values.device
        ns = self.block_ids.numel()
        stored = torch.arange(ns, device=dev)
        row_kept = torch.zeros(ns, r, dtype=torch.bool, device=dev)
        block_of_row = torch.repeat_interleave(stored, self._per_block(0))  # (sum kr,)
        row_kept[block_of_row, self.row_indices.long()] = True
        col_kept = torch.zeros(ns, c, dtype=torch.bool, device=dev)
        block_of_col = torch.repeat_interleave(stored, self._per_block(1))  # (sum kc,)
        col_kept[block_of_col, self.col_indices.long()] = True
        tiles = torch.zeros(ns, r, c, dtype=self.values.dtype, device=dev)
        tiles[_cross(row_kept, col_kept)] = self.values
        grid = torch.zeros(nbr * nbc, r, c, dtype=self.values.dtype, device=dev)
        grid[self.block_ids.long()] = tiles
        return from_tiles(grid.reshape(nbr, nbc, r, c), *self.matrix_shape).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor `to_state` writes (metadata included)."""
        return tensor_bytes(self.to_state().values())
