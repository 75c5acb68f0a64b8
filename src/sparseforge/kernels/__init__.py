"""Sparse inference kernels: ops on `torch.library` (C++ built lazily on first call, never at
import) and the modules that call them."""

from .ops import (
    bcr_linear,
    bcr_linear_reference,
    bsr_linear,
    bsr_linear_reference,
    csr_linear,
    csr_linear_reference,
)
from .sparse_conv import SparseConv2d
from .sparse_linear import SparseLinear

__all__ = [
    "SparseConv2d", "SparseLinear", "bcr_linear", "bcr_linear_reference", "bsr_linear", "bsr_linear_reference",
    "csr_linear", "csr_linear_reference",
]
