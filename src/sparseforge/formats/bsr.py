"""BSR (block sparse rows) of a weight's GEMM matrix for `block`-scheme masks: kept bh x bw
tiles stored dense, addressed CSR-style by block row and block column."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..sparsity.schemes import check_block
from .base import (
    TensorState,
    gemm_shape,
    index_dtype,
    kept_entries,
    tensor_bytes,
)


def to_tiles(mat: Tensor, bh: int, bw: int) -> Tensor:
    """(rows, cols) -> (ceil(rows/bh), ceil(cols/bw), bh, bw), zero-padding the ragged edge."""
    padded = torch.nn.functional.pad(mat, (0, -mat.shape[1] % bw, 0, -mat.shape[0] % bh))
    nbr, nbc = padded.shape[0] // bh, padded.shape[1] // bw
    return padded.reshape(nbr, bh, nbc, bw).permute(0, 2, 1, 3)


def from_tiles(tiles: Tensor, rows: int, cols: int) -> Tensor:
    """Inverse of `to_tiles`: (nbr, nbc, bh, bw) -> (rows, cols), dropping the padding."""
    nbr, nbc, bh, bw = tiles.shape
    return tiles.permute(0, 2, 1, 3).reshape(nbr * bh, nbc * bw)[:rows, :cols]


@dataclass(frozen=True, eq=False)
class BSR(TensorState):
    """Block sparse rows: block row i holds tiles `values[crow[i]:crow[i+1]]` at block columns
    `col_indices[...]` (ascending). A matrix whose sizes do not divide by the block is padded
    with zeros to the block multiple; `shape` keeps the true size and `to_dense` crops to it."""

    shape: tuple[int, ...]  # the weight's own shape
    block: tuple[int, int]  # (bh, bw)
    crow_indices: Tensor  # (ceil(rows/bh) + 1,)
    col_indices: Tensor  # (nblocks,), block-column index
    values: Tensor  # (nblocks, bh, bw), dense tiles (edge tiles zero-padded)

    KIND: ClassVar[int] = 2
    FIELDS: ClassVar[tuple[str, ...]] = ("shape", "block", "crow_indices", "col_indices", "values")

    @classmethod
    def from_dense(
        cls, weight: Tensor, block: tuple[int, int] = (4, 4), mask: Tensor | None = None
    ) -> BSR:
        """Keep every tile with any nonzero (or, with `mask`, any masked-in entry)."""
        bh, bw = check_block(block)
        weight = weight.detach()
        rows, cols = gemm_shape(tuple(weight.shape))
        kept = kept_entries(weight, mask).reshape(rows, cols)
        tiles = to_tiles(weight.reshape(rows, cols), bh, bw)  # (nbr, nbc, bh, bw)
        tile_kept = to_tiles(kept, bh, bw).any(dim=(2, 3))  # (nbr, nbc)
        itype = index_dtype(tile_kept.numel())
        crow = torch.zeros(tile_kept.shape[0] + 1, dtype=itype, device=weight.device)
        crow[1:] = tile_kept.sum(1).cumsum(0)
        col = tile_kept.nonzero()[:, 1].to(itype)
        return cls(tuple(weight.shape), (bh, bw), crow, col, tiles[tile_kept].contiguous())

    def to_dense(self) -> Tensor:
        """The weight in its own shape: kept tiles in place, zeros elsewhere, padding cropped."""
        nbr, nbc = self.grid
        dev = self.values.device
        counts = (self.crow_indices[1:] - self.crow_indices[:-1]).long()  # (nbr,)
        brow = torch.repeat_interleave(torch.arange(nbr, device=dev), counts)  # (nblocks,)
        tiles = torch.zeros(nbr, nbc, *self.block, dtype=self.values.dtype, device=dev)
        tiles[brow, self.col_indices.long()] = self.values
        return from_tiles(tiles, *self.matrix_shape).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor `to_state` writes (metadata included)."""
        return tensor_bytes(self.to_state().values())
