"""CSR of a weight's GEMM matrix (out, in*kh*kw): row pointers, column indices and the stored
values, the layout of `torch.sparse_csr_tensor` and of unstructured sparse kernels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import (
    TensorState,
    gemm_shape,
    index_dtype,
    kept_entries,
    tensor_bytes,
)


@dataclass(frozen=True, eq=False)
class CSR(TensorState):
    """Compressed sparse rows: row i's entries are `values[crow[i]:crow[i+1]]` at columns
    `col_indices[crow[i]:crow[i+1]]` (ascending). Indices are int32 where they fit, else int64."""

    shape: tuple[int, ...]  # the weight's own shape (e.g. 4-D for a convolution)
    crow_indices: Tensor  # (rows + 1,)
    col_indices: Tensor  # (nnz,)
    values: Tensor  # (nnz,), the weight's dtype

    KIND: ClassVar[int] = 1
    FIELDS: ClassVar[tuple[str, ...]] = ("shape", "crow_indices", "col_indices", "values")

    @classmethod
    def from_dense(cls, weight: Tensor, mask: Tensor | None = None) -> CSR:
        """Store the nonzeros of `weight` (or, with `mask`, every masked-in entry, zeros too)."""
        weight = weight.detach()
        rows, cols = gemm_shape(tuple(weight.shape))
        mat = weight.reshape(rows, cols)
        kept = kept_entries(weight, mask).reshape(rows, cols)  # (rows, cols)
        itype = index_dtype(kept.numel())
        crow = torch.zeros(rows + 1, dtype=itype, device=mat.device)
        crow[1:] = kept.sum(1).cumsum(0)
        cols_idx = kept.nonzero()[:, 1].to(itype)  # row-major: grouped by row, ascending columns
        return cls(tuple(weight.shape), crow, cols_idx, mat[kept])

    def to_dense(self) -> Tensor:
        """The weight in its own shape, stored entries in place and zeros elsewhere."""
        rows, cols = self.matrix_shape
        counts = self.crow_indices[1:] - self.crow_indices[:-1]  # (rows,)
        rows_idx = torch.arange(rows, device=self.values.device)
        row_of = torch.repeat_interleave(rows_idx, counts.long())  # (nnz,)
        mat = torch.zeros(rows, cols, dtype=self.values.dtype, device=self.values.device)
        mat[row_of, self.col_indices.long()] = self.values
        return mat.reshape(self.shape)

    def to_torch(self) -> Tensor:
        """The GEMM matrix as a `torch.sparse_csr_tensor`, e.g. for `torch.sparse.mm`."""
        return torch.sparse_csr_tensor(
            self.crow_indices, self.col_indices, self.values, self.matrix_shape,
            check_invariants=True,
        )

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor `to_state` writes (metadata included)."""
        return tensor_bytes(self.to_state().values())
