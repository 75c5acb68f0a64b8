"""Sparse Conv2d as im2col + a sparse linear kernel on the weight's GEMM view (out, in*kh*kw),
the layout the mask engine prunes in, so every linear format (BSR, BCR, CSR) serves convs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..sparsity.masks import get_mask
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
