"""Modules for activation-sparse FFNs (ProSparse: ReLU / FATReLU leave ~90% of the intermediate
activation exactly zero): `SparseInputLinear`, a linear whose input is mostly zeros (the down
projection), and `ReluGatedFFN`, a gated FFN with a FATReLU gate. They call
`sparseforge::{sparse_input_linear,relu_gated_ffn}` (C++ on CPU float32, Triton on CUDA), or
the reference twins when those cannot run.

The non-gated (BERT) FFN needs no op of its own: `nn.Sequential(fc1, nn.ReLU(),
SparseInputLinear.from_linear(fc2))` skips the zeros the ReLU leaves."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import ops

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# Above this many rows (tokens) the zero-skipping kernels stop paying: the union of the rows'
# active neurons approaches all of them, and MKL's dense GEMM wins (measured with MiniLM: 86
# tokens ran 2x slower than dense). The kernels target decoding and short inputs, 1-16 tokens.
MAX_ROWS = 16


def _use_op(x: Tensor, op: str) -> bool:
    """Whether to call the op on `x` (else its reference, which is the dense computation): at
    most MAX_ROWS rows, and CPU float32 with the C++ kernel built, or CUDA with triton. Under
    torch.compile the op stays an opaque call (its fake impl gives the shape) and the build
    check runs in eager calls only, so it never breaks the graph."""
    if x.shape[0] > MAX_ROWS:
        return False
    if ops.cpu_kernel_runs(x, op):
        return True
    if x.device.type == "cuda" and x.dtype in _TRITON_DTYPES:
        from .triton_act_sparse import has_triton

        return has_triton()
    return False


class SparseInputLinear(nn.Module):
    """y = a @ W^T + b for an input `a` that is mostly exact zeros: W is held transposed, W^T
    (in, out), so a zero input feature skips its row."""

    def __init__(self, weight_t: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight_t.shape
        self.register_buffer("weight_t", weight_t.detach().contiguous())  # (K, N)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())  # (N,)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> SparseInputLinear:
        """From an nn.Linear (masked or not: `linear.weight` reads as the weight in use)."""
        with torch.no_grad():
            return cls(linear.weight.detach().t().contiguous(), linear.bias)

    def forward(self, a: Tensor) -> Tensor:  # (..., in) -> (..., out)
        # the op takes (..., K) itself: no reshape around it, so a residual add that follows
        # is its direct user, for the fusion planner to fold into the kernel
        if _use_op(a.reshape(-1, self.in_features), "sparse_input_linear"):
            return ops.sparse_input_linear(a, self.weight_t, self.bias)
        return ops.sparse_input_linear_reference(a, self.weight_t, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class ReluGatedFFN(nn.Module):
    """y = (FATReLU(x Wg^T) * (x Wu^T)) Wd^T, the LLaMA MLP with its SiLU replaced by FATReLU
    (v if v >= threshold else 0; threshold 0 is ReLU), computing the up and down projections
    only for neurons whose gate survives. Bias-free, as LLaMA's linears are."""

    def __init__(self, w_gate: Tensor, w_up: Tensor, w_down_t: Tensor, threshold: float = 0.0):
        super().__init__()
        if w_gate.shape != w_up.shape or w_down_t.shape[0] != w_gate.shape[0]:
            raise ValueError(f"need w_gate and w_up (I, H) and w_down_t (I, N); got "
                             f"{tuple(w_gate.shape)}, {tuple(w_up.shape)}, {tuple(w_down_t.shape)}")
        self.intermediate, self.in_features = w_gate.shape
        self.out_features = w_down_t.shape[1]
        self.threshold = float(threshold)
        self.register_buffer("w_gate", w_gate.detach().contiguous())  # (I, H)
        self.register_buffer("w_up", w_up.detach().contiguous())  # (I, H)
        self.register_buffer("w_down_t", w_down_t.detach().contiguous())  # (I, N)

    @classmethod
    def from_linears(cls, gate: nn.Linear, up: nn.Linear, down: nn.Linear,
                     threshold: float = 0.0) -> ReluGatedFFN:
        """From the three linears of a gated MLP (gate_proj, up_proj, down_proj), all without
        bias; `threshold` is the FATReLU threshold the gate was trained with."""
        for name, lin in (("gate", gate), ("up", up), ("down", down)):
            if lin.bias is not None:
                raise ValueError(f"ReluGatedFFN takes bias-free linears (LLaMA's MLP); {name} "
                                 f"has a bias. For a BERT-style FFN use nn.Sequential(fc1, "
                                 f"nn.ReLU(), SparseInputLinear.from_linear(fc2))")
        with torch.no_grad():
            return cls(gate.weight, up.weight, down.weight.t().contiguous(), threshold)

    def forward(self, x: Tensor) -> Tensor:  # (..., H) -> (..., N)
        x2 = x.reshape(-1, self.in_features)  # (B, H)
        args = (x2, self.w_gate, self.w_up, self.w_down_t, self.threshold)
        if _use_op(x2, "relu_gated_ffn"):
            y = ops.relu_gated_ffn(*args)
        else:
            y = ops.relu_gated_ffn_reference(*args)
        return y.reshape(*x.shape[:-1], self.out_features)  # (..., N)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, intermediate={self.intermediate}, "
                f"out_features={self.out_features}, threshold={self.threshold}")
