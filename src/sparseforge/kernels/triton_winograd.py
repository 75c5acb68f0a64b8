"""Triton (CUDA) path of `sparseforge::winograd_int8_conv2d`: the batched int8 GEMM over the
a*a transform positions, M[pos] (K, P) = q_u[pos] (K, C) @ q_v[pos] (C, P), as int8 tl.dot with
int32 accumulation and the dequantize (out_scale per position and out channel) fused on the way
out. The input transform + quantize and the output transform + bias + relu run as PyTorch ops
around it (not fused: a first version). Untuned: checked against the reference in Triton's
interpreter (TRITON_INTERPRET=1, CPU tensors); block sizes are first guesses, not measured."""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor

from ..quant.winograd import (
    output_epilogue,
    output_transform,
    quantize_uint8,
    quantized_input_transform,
    tile_grid,
    unpack_weights,
)

BLOCK_K, BLOCK_P, BLOCK_C = 32, 32, 32  # tl.dot needs >= 16 on every side


@functools.cache
def has_triton() -> bool:
    """Whether triton is importable (the kernel below exists only then)."""
    return importlib.util.find_spec("triton") is not None


if has_triton():
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton

    @triton.jit
    def _winograd_gemm_kernel(
        u_ptr, v_ptr, s_ptr, m_ptr, K, C, P,
        BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """m[pos] (K, P) float32 = s[pos][:, None] * (u[pos] (K, C) int8 @ v[pos] (C, P) int8)
        for this program's (BLOCK_K, BLOCK_P) tile of position `pos`."""
        pid_p, pid_k, pos = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        k_mask, p_mask = offs_k < K, offs_p < P
        u_base, v_base = u_ptr + pos * K * C, v_ptr + pos * C * P
        acc = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.int32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            c_mask = offs_c < C
            u = tl.load(u_base + offs_k[:, None] * C + offs_c[None, :],
                        mask=k_mask[:, None] & c_mask[None, :], other=0)  # (BK, BC) int8
            v = tl.load(v_base + offs_c[:, None] * P + offs_p[None, :],
                        mask=c_mask[:, None] & p_mask[None, :], other=0)  # (BC, BP) int8
            acc += tl.dot(u, v, out_dtype=tl.int32)
        s = tl.load(s_ptr + pos * K + offs_k, mask=k_mask, other=0.0)  # (BK,)
        out = acc.to(tl.float32) * s[:, None]
        tl.store(m_ptr + pos * K * P + offs_k[:, None] * P + offs_p[None, :], out,
                 mask=k_mask[:, None] & p_mask[None, :])

    @triton_op("sparseforge::_triton_winograd_gemm", mutates_args={})
    def _triton_winograd_gemm(q_u: Tensor, q_v: Tensor, out_scale: Tensor) -> Tensor:
        aa, k, c = q_u.shape
        p = q_v.shape[2]
        torch._check(q_v.shape[:2] == (aa, c), lambda: f"q_v must be (a*a, {c}, P), got {tuple(q_v.shape)}")
        m = torch.empty(aa, k, p, device=q_u.device, dtype=torch.float32)  # (aa, K, P)
        if k and p and aa:
            grid = (triton.cdiv(p, BLOCK_P), triton.cdiv(k, BLOCK_K), aa)
            wrap_triton(_winograd_gemm_kernel)[grid](
                q_u.contiguous(), q_v.contiguous(), out_scale.float().contiguous(), m, k, c, p,
                BLOCK_K=BLOCK_K, BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C)
        return m


def winograd_gemm(q_u: Tensor, q_v: Tensor, out_scale: Tensor) -> Tensor:
    """(a*a, K, P) float32 = out_scale[..., None] * (q_u (a*a, K, C) @ q_v (a*a, C, P)), int8
    operands, int32 accumulation, in Triton."""
    return torch.ops.sparseforge._triton_winograd_gemm(q_u, q_v, out_scale)


def winograd_int8_conv2d(
    x: Tensor, u_packed: Tensor, u_sum: Tensor, v_scale: Tensor, out_scale: Tensor,
    bias: Tensor | None, tile: int, padding: list[int], relu: bool, residual: Tensor | None = None,
    x_scale: float = 1.0, x_zero_point: int = 0, y_scale: float | None = None,
    y_zero_point: int = 0,
) -> Tensor:
    """`winograd_int8_reference` with its GEMM in Triton (fp32 transforms and the uint8
    input / output conversions in PyTorch)."""
    pad = (padding[0], padding[1])
    n, c, h, w = x.shape
    k = out_scale.shape[1]
    ho, wo, _, _ = tile_grid(h, w, tile, pad)
    q_v = quantized_input_transform(x, v_scale, tile, pad, x_scale, x_zero_point)
    q_u = unpack_weights(u_packed, k, c).contiguous()  # (aa, K, C) int8
    m = winograd_gemm(q_u, q_v.to(torch.int8), out_scale)  # (aa, K, P)
    y = output_epilogue(output_transform(m, tile, n, ho, wo), bias, residual, relu)
    return y if y_scale is None else quantize_uint8(y, y_scale, y_zero_point)
