"""`sparseforge::sparse_conv2d`: direct sparse convolution (csrc/cpu/sparse_conv2d.cpp) with
the sparse linears' epilogue, its fake impl and its `sparse_conv2d_reference` twin. The weight
is CSR over its GEMM view (out, in * kh * kw), the layout the mask engine prunes in."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparseforge.formats import CSR

from . import extension
from .ops import _BOUND_FAKES, _EPILOGUE_SCHEMA, _check_epilogue, eager_op, epilogue_reference, lib

lib.define(
    "sparse_conv2d(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, "
    "Tensor? bias, int[2] kernel_size, int[2] stride=[1, 1], int[2] padding=[0, 0], "
    f"int[2] dilation=[1, 1], {_EPILOGUE_SCHEMA}) -> Tensor"
)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a dilation-1 convolution along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def sparse_conv2d_reference(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, bias: Tensor | None,
    kernel_size: list[int], stride: list[int] = (1, 1), padding: list[int] = (0, 0),
    dilation: list[int] = (1, 1), activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    """y = act(conv2d(x, W) + b + residual) with W (O, C, kh, kw) stored as CSR of its GEMM view
    (O, C * kh * kw). Densifies W, then F.conv2d."""
    out_channels, (kh, kw) = crow_indices.numel() - 1, kernel_size
    fmt = CSR((out_channels, x.shape[1] * kh * kw), crow_indices, col_indices, values)
    weight = fmt.to_dense().reshape(out_channels, x.shape[1], kh, kw)
    y = F.conv2d(x, weight, bias, list(stride), list(padding), list(dilation))
    return epilogue_reference(y, activation, residual)


@torch.library.register_fake("sparseforge::sparse_conv2d", lib=lib)
def _sparse_conv2d_fake(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, bias: Tensor | None,
    kernel_size: list[int], stride: list[int] = (1, 1), padding: list[int] = (0, 0),
    dilation: list[int] = (1, 1), activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    torch._check(x.dim() == 4, lambda: "x must be (N, C, H, W)")
    torch._check(values.dim() == 1, lambda: "values must be (nnz,)")
    torch._check(tuple(dilation) == (1, 1), lambda: f"dilation must be 1, got {dilation}")
    out_h, out_w = (conv_output_size(s, k, st, p) for s, k, st, p in
                    zip(x.shape[2:], kernel_size, stride, padding, strict=True))
    shape = (x.shape[0], crow_indices.shape[0] - 1, out_h, out_w)
    _check_epilogue(shape, activation, residual)
    return x.new_empty(shape)


def _sparse_conv2d_cpu(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, bias: Tensor | None,
    kernel_size: list[int], stride: list[int] = (1, 1), padding: list[int] = (0, 0),
    dilation: list[int] = (1, 1), activation: str = "none", residual: Tensor | None = None,
) -> Tensor:  # the dispatcher drops arguments left at their default: pass them all on
    return extension.kernel("sparse_conv2d")(
        x, crow_indices, col_indices, values, bias, list(kernel_size), list(stride),
        list(padding), list(dilation), activation, residual,
    )


lib.impl("sparse_conv2d", _sparse_conv2d_cpu, "CPU")
_BOUND_FAKES["sparse_conv2d"] = _sparse_conv2d_fake  # graph/lower.py may call the kernel itself


def sparse_conv2d(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, bias: Tensor | None,
    kernel_size: list[int], stride: list[int] = (1, 1), padding: list[int] = (0, 0),
    dilation: list[int] = (1, 1), activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    """`torch.ops.sparseforge.sparse_conv2d`: the fast CPU path of `sparse_conv2d_reference`."""
    return eager_op("sparse_conv2d", x)(
        x, crow_indices, col_indices, values, bias, list(kernel_size), list(stride),
        list(padding), list(dilation), activation, residual,
    )
