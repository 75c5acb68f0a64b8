"""`GemvLinear`: an nn.Linear for a few rows at a time (batch-1 inference, decoding) that calls
`sparseforge::gemv_linear`, which streams the weight once with every thread; dense weights, so
it serves any float32 linear, masked or not. `deploy` offers it as the "gemv" candidate and
keeps it only where it measures faster than the layer as it is."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import ops


class GemvLinear(nn.Module):
    """y = x @ W^T + b, the weight held dense (out, in) as nn.Linear holds it."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.detach().contiguous())  # (N, K)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())  # (N,)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> GemvLinear:
        """From an nn.Linear (masked or not: `linear.weight` reads as the weight in use)."""
        with torch.no_grad():
            return cls(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        if ops.cpu_kernel_runs(x, "gemv_linear"):
            return ops.gemv_linear(x, self.weight, self.bias)
        return ops.gemv_linear_reference(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
