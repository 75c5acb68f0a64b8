"""Sparse Conv2d two ways: `SparseConv2d`, im2col + a sparse linear kernel on the weight's GEMM
view (out, in*kh*kw), so every linear format (BSR, BCR, CSR) serves convs; and
`DirectSparseConv2d`, direct sparse convolution on the CSR of that view (no im2col)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..formats import CSR
from ..sparsity.masks import get_mask
from . import conv_ops, ops
from .sparse_linear import SparseLinear


class SparseConv2d(nn.Module):
    """y = conv2d(x, W) computed as unfold(x) @ W_gemm^T with W_gemm in a sparse format."""

    def __init__(self, conv: nn.Conv2d, linear: SparseLinear) -> None:
        super().__init__()
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.linear = linear

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, block: tuple[int, int] = (16, 16), format: str = "csr",
        mask: Tensor | None = None,
    ) -> SparseConv2d:
        """Convert a masked or baked Conv2d (groups 1, zero padding given as numbers)."""
        if conv.groups != 1:
            raise ValueError(
                f"SparseConv2d needs groups=1, this Conv2d has groups={conv.groups}: keep it dense"
            )
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"SparseConv2d needs numeric zero padding, got padding={conv.padding!r} "
                f"({conv.padding_mode}): keep this layer dense"
            )
        mask = get_mask(conv) if mask is None else mask
        weight = conv.weight.detach()
        gemm = nn.Linear(weight[0].numel(), conv.out_channels, bias=conv.bias is not None)
        with torch.no_grad():
            gemm.weight.copy_(weight.reshape(conv.out_channels, -1))  # (O, C*kh*kw)
            if conv.bias is not None:
                gemm.bias.copy_(conv.bias.detach())
        flat_mask = None if mask is None else mask.reshape(conv.out_channels, -1)
        return cls(conv, SparseLinear.from_linear(gemm, block, format, mask=flat_mask))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, O, H', W')
        b, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        y = self.linear(cols.transpose(1, 2))  # (B, L, O)
        out_h, out_w = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(
                (h, w), self.padding, self.dilation, self.kernel_size, self.stride, strict=True
            )
        )
        return y.transpose(1, 2).reshape(b, self.out_channels, out_h, out_w)


class DirectSparseConv2d(nn.Module):
    """y = act(conv2d(x, W) + b + residual) by direct sparse convolution
    (`sparseforge::sparse_conv2d`): W kept as CSR of its GEMM view in the buffers
    crow_indices / col_indices / values (lossless: `to_format()` gives it back)."""

    def __init__(self, conv: nn.Conv2d, fmt: CSR, activation: str = "none") -> None:
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = tuple(conv.kernel_size), tuple(conv.stride)
        self.padding = tuple(conv.padding)
        self.activation = activation
        self.register_buffer("crow_indices", fmt.crow_indices)
        self.register_buffer("col_indices", fmt.col_indices)
        self.register_buffer("values", fmt.values)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mask: Tensor | None = None,
                  activation: str = "none") -> DirectSparseConv2d:
        """Convert a masked or baked Conv2d (groups 1, dilation 1, numeric zero padding). The
        kept entries are `mask`, else the layer's mask, else the nonzeros."""
        reason = direct_conv_unsupported(conv)
        if reason:
            raise ValueError(f"DirectSparseConv2d: {reason}; keep this layer dense or use "
                             "SparseConv2d (im2col)")
        mask = get_mask(conv) if mask is None else mask
        with torch.no_grad():
            weight = conv.weight.detach().reshape(conv.out_channels, -1)  # (O, C*kh*kw)
            flat_mask = None if mask is None else mask.reshape(conv.out_channels, -1)
            fmt = CSR.from_dense(weight, mask=flat_mask)
        return cls(conv, fmt, activation)

    def to_format(self) -> CSR:
        """The weight's GEMM view (O, C*kh*kw) as CSR."""
        k = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return CSR((self.out_channels, k), self.crow_indices, self.col_indices, self.values)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:  # (B, C, H, W)
        args = (x, self.crow_indices, self.col_indices, self.values, self.bias,
                list(self.kernel_size), list(self.stride), list(self.padding), [1, 1],
                self.activation, residual)
        if ops.cpu_kernel_runs(x, "sparse_conv2d"):
            return conv_ops.sparse_conv2d(*args)
        return conv_ops.sparse_conv2d_reference(*args)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, activation={self.activation}, "
                f"stored_values={self.values.numel()}")


def direct_conv_unsupported(conv: nn.Conv2d) -> str | None:
    """None when the direct sparse kernel can compute `conv`, else why not."""
    if conv.groups != 1:
        return f"needs groups=1, this Conv2d has groups={conv.groups}"
    if tuple(conv.dilation) != (1, 1):
        return f"needs dilation=1, this Conv2d has dilation={tuple(conv.dilation)}"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"needs numeric zero padding, got padding={conv.padding!r} ({conv.padding_mode})"
    if conv.weight.dtype != torch.float32:
        return f"weight is {conv.weight.dtype}; the direct kernel is float32 only"
    return None
