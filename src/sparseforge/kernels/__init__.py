"""Sparse inference kernels: ops on `torch.library` (C++ built lazily on first call, never at
import) and the modules that call them."""

from .ops import bsr_linear, bsr_linear_reference
from .sparse_linear import SparseLinear

__all__ = ["SparseLinear", "bsr_linear", "bsr_linear_reference"]
