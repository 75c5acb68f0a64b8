"""`SparseLinear`: an nn.Linear whose weight is stored as BSR and multiplied by the C++ kernel
(`sparseforge::bsr_linear`), or by its reference twin when the kernel cannot be built."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from sparseforge.formats import BSR

from . import extension, ops

_build_error: list[str] = []  # the compiler error, once the build has failed in this process


def kernel_available() -> bool:
    """Whether the C++ kernel builds here; on the first failure warns once, naming the error."""
    if _build_error:
        return False
    try:
        extension.kernel("bsr_linear")
    except extension.ExtensionBuildError as e:
        _build_error.append(e.reason)
        warnings.warn(
            f"{e}; SparseLinear falls back to the (slower) PyTorch reference",
            RuntimeWarning, stacklevel=3,
        )
        return False
    return True


class SparseLinear(nn.Module):
    """y = x @ W^T + b with W held as BSR tiles (transposed, as the kernel reads them)."""

    def __init__(self, fmt: BSR, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = fmt.matrix_shape
        self.block = fmt.block
        self.register_buffer("crow_indices", fmt.crow_indices)
        self.register_buffer("col_indices", fmt.col_indices)
        self.register_buffer("values_t", fmt.values.transpose(1, 2).contiguous())  # (nb, bw, bh)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, block: tuple[int, int] = (16, 16)) -> SparseLinear:
        """Convert a masked (parametrized) or baked nn.Linear: `linear.weight` reads as the
        masked weight either way; tiles with no nonzero are dropped."""
        with torch.no_grad():
            fmt = BSR.from_dense(linear.weight.detach(), block=block)
        return cls(fmt, linear.bias)

    def to_bsr(self) -> BSR:
        """The weight back in the storage format."""
        return BSR((self.out_features, self.in_features), self.block, self.crow_indices,
                   self.col_indices, self.values_t.transpose(1, 2).contiguous())

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        args = (x, self.crow_indices, self.col_indices, self.values_t, self.bias,
                self.out_features)
        if x.device.type == "cpu" and x.dtype == torch.float32 and kernel_available():
            return ops.bsr_linear(*args)
        return ops.bsr_linear_reference(*args)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"block={self.block}, tiles={self.values_t.shape[0]}")
