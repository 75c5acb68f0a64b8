"""Triton kernels (CUDA) for the activation-sparse ops in ops.py: `sparse_input_linear` and
`relu_gated_ffn` for float16 / bfloat16 (float32 too), accumulating in float32, for 1..16 tokens
(more go in groups of 16). `torch.ops.sparseforge.{sparse_input_linear,relu_gated_ffn}` on CUDA
tensors land here. Untuned: written and checked against the reference in Triton's interpreter
(TRITON_INTERPRET=1, on CPU tensors); block sizes are first guesses, not measured on a GPU.

A zero activation skips its weight row through a masked load: each program takes a (BLOCK_K,
BLOCK_N) tile of W^T, loads only the rows some token uses (a masked-off load issues no memory
transaction), and multiplies with tl.dot; K is split across programs whose float32 partial
sums meet by atomic add."""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.cache
def has_triton() -> bool:
    """Whether triton is importable (the kernels below exist only then)."""
    return importlib.util.find_spec("triton") is not None


BLOCK_B = 16  # tokens per program (tl.dot needs >= 16 rows; fewer tokens are masked)
BLOCK_K, BLOCK_N = 32, 64  # W^T tile per step, (BLOCK_K, BLOCK_N)
TARGET_PROGRAMS = 512  # split K until about this many programs run


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # float32: no TF32 rounding


def _split_k(k: int, n_programs: int) -> tuple[int, int]:
    """(splits, rows per split, a multiple of BLOCK_K) so about TARGET_PROGRAMS run."""
    k_blocks = -(-k // BLOCK_K)
    splits = max(1, min(k_blocks, TARGET_PROGRAMS // max(1, n_programs)))
    per = -(-k_blocks // splits) * BLOCK_K
    return -(-k // per), per


if has_triton():
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton

    @triton.jit
    def _sparse_input_linear_kernel(
        a_ptr, wt_ptr, out_ptr, B, K, N, k_per_split,
        PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """out (B, N) float32 += a[:, ks] @ W^T[ks, :] over this program's K range ks, reading
        only the rows of W^T that some token of its group uses."""
        pid_n, pid_k, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        b_mask, n_mask = offs_b < B, offs_n < N
        k_lo = pid_k * k_per_split
        k_hi = tl.minimum(k_lo + k_per_split, K)
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < k_hi
            a = tl.load(a_ptr + offs_b[:, None] * K + offs_k[None, :],
                        mask=b_mask[:, None] & k_mask[None, :], other=0.0)  # (BB, BK)
            used = tl.sum((a != 0).to(tl.int32), axis=0) > 0  # (BK,): row needed by a token
            w = tl.load(wt_ptr + offs_k[:, None] * N + offs_n[None, :],
                        mask=used[:, None] & n_mask[None, :], other=0.0)  # (BK, BN)
            acc += tl.dot(a, w, input_precision=PRECISION)
        tl.atomic_add(out_ptr + offs_b[:, None] * N + offs_n[None, :], acc,
                      mask=b_mask[:, None] & n_mask[None, :])

    @triton.jit
    def _gated_up_kernel(
        x_ptr, g_ptr, wu_ptr, h_ptr, B, H, NI,
        PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_I: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        """h (B, NI) = g * (x @ Wu^T) for this program's BLOCK_I neurons, reading a row of Wu
        (NI, H) only where some token's gate g survived."""
        pid_i, pid_b = tl.program_id(0), tl.program_id(1)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
        b_mask, i_mask = offs_b < B, offs_i < NI
        bi_mask = b_mask[:, None] & i_mask[None, :]
        g = tl.load(g_ptr + offs_b[:, None] * NI + offs_i[None, :], mask=bi_mask, other=0.0)
        used = tl.sum((g != 0).to(tl.int32), axis=0) > 0  # (BI,)
        acc = tl.zeros((BLOCK_B, BLOCK_I), dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            h_mask = offs_h < H
            x = tl.load(x_ptr + offs_b[:, None] * H + offs_h[None, :],
                        mask=b_mask[:, None] & h_mask[None, :], other=0.0)  # (BB, BH)
            wu = tl.load(wu_ptr + offs_i[None, :] * H + offs_h[:, None],
                         mask=used[None, :] & h_mask[:, None], other=0.0)  # (BH, BI): Wu^T
            acc += tl.dot(x, wu, input_precision=PRECISION)
        h = acc * g.to(tl.float32)
        tl.store(h_ptr + offs_b[:, None] * NI + offs_i[None, :], h.to(h_ptr.dtype.element_ty),
                 mask=bi_mask)

    def _check(t: Tensor, name: str, ref: Tensor) -> None:
        torch._check(t.dtype == ref.dtype and t.device == ref.device,
                     lambda: f"{name} is {t.dtype} on {t.device}, want {ref.dtype} on {ref.device}")

    @triton_op("sparseforge::_triton_sparse_input_linear", mutates_args={})
    def _triton_sparse_input_linear(a: Tensor, weight_t: Tensor, bias: Tensor | None) -> Tensor:
        k, n = weight_t.shape
        torch._check(a.shape[-1] == k, lambda: f"a (..., {a.shape[-1]}) needs weight_t ({a.shape[-1]}, N), got {tuple(weight_t.shape)}")
        _check(weight_t, "weight_t", a)
        a2, wt = a.reshape(-1, k).contiguous(), weight_t.contiguous()  # (B, K), (K, N)
        b = a2.shape[0]
        out = torch.zeros(b, n, device=a.device, dtype=torch.float32)  # (B, N) partial sums
        if b and n and k:
            n_blocks, b_blocks = triton.cdiv(n, BLOCK_N), triton.cdiv(b, BLOCK_B)
            splits, per = _split_k(k, n_blocks * b_blocks)
            wrap_triton(_sparse_input_linear_kernel)[(n_blocks, splits, b_blocks)](
                a2, wt, out, b, k, n, per, PRECISION=_dot_precision(a.dtype), BLOCK_B=BLOCK_B,
                BLOCK_K=BLOCK_K, BLOCK_N=BLOCK_N,
            )
        if bias is not None:
            out += bias.float()
        return out.to(a.dtype).reshape(*a.shape[:-1], n)  # (..., N)

    @triton_op("sparseforge::_triton_relu_gated_ffn", mutates_args={})
    def _triton_relu_gated_ffn(
        x: Tensor, w_gate: Tensor, w_up: Tensor, w_down_t: Tensor, threshold: float
    ) -> Tensor:
        i, h = w_gate.shape
        torch._check(w_up.shape == w_gate.shape and x.shape[-1] == h and w_down_t.shape[0] == i,
                     lambda: f"need x (..., H), w_gate and w_up (I, H), w_down_t (I, N); got "
                             f"{tuple(x.shape)}, {tuple(w_gate.shape)}, {tuple(w_up.shape)}, "
                             f"{tuple(w_down_t.shape)}")
        for t, name in ((w_gate, "w_gate"), (w_up, "w_up"), (w_down_t, "w_down_t")):
            _check(t, name, x)
        x2 = x.reshape(-1, h).contiguous()  # (B, H)
        g = F.linear(x2, w_gate)  # (B, I), dense
        g = torch.where(g >= threshold, g, torch.zeros_like(g)).contiguous()  # FATReLU
        act = torch.empty_like(g)  # (B, I): gate * up, zero where the gate is
        b = x2.shape[0]
        if b and i:
            grid = (triton.cdiv(i, BLOCK_N), triton.cdiv(b, BLOCK_B))
            wrap_triton(_gated_up_kernel)[grid](
                x2, g, w_up.contiguous(), act, b, h, i, PRECISION=_dot_precision(x.dtype),
                BLOCK_B=BLOCK_B, BLOCK_I=BLOCK_N, BLOCK_H=BLOCK_K,
            )
        y = _triton_sparse_input_linear(act, w_down_t, None)  # (B, N)
        return y.reshape(*x.shape[:-1], w_down_t.shape[1])

    sparse_input_linear = _triton_sparse_input_linear
    relu_gated_ffn = _triton_relu_gated_ffn
