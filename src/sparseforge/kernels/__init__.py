"""Sparse inference kernels: ops on `torch.library` (C++ built lazily on first call, never at
import) and the modules that call them."""

from .activation_sparse import ReluGatedFFN, SparseInputLinear
from .gemv_linear import GemvLinear
from .ops import (
    bcr_linear,
    bcr_linear_reference,
    bsr_linear,
    bsr_linear_reference,
    csr_linear,
    csr_linear_reference,
    gemv_linear,
    gemv_linear_reference,
    nm_linear,
    nm_linear_reference,
    relu_gated_ffn,
    relu_gated_ffn_reference,
    sparse_input_linear,
    sparse_input_linear_reference,
)
from .sparse_conv import DirectSparseConv2d, SparseConv2d
from .sparse_linear import SparseLinear

__all__ = [
    "DirectSparseConv2d", "GemvLinear", "ReluGatedFFN", "SparseConv2d", "SparseInputLinear",
    "SparseLinear", "bcr_linear", "bcr_linear_reference", "bsr_linear", "bsr_linear_reference",
    "csr_linear", "csr_linear_reference", "gemv_linear", "gemv_linear_reference", "nm_linear",
    "nm_linear_reference", "relu_gated_ffn", "relu_gated_ffn_reference", "sparse_input_linear",
    "sparse_input_linear_reference",
]
