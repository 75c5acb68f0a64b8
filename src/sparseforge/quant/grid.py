"""The quantization grid as tensor math: integer ranges, scale and zero point from a range,
quantize / dequantize, and fake quantization with a straight-through gradient. Fake
quantization runs on PyTorch's own `fake_quantize_per_{tensor,channel}_affine` ops (core aten,
clipped straight-through backward); `quantize`/`dequantize` are the integer reference twins."""

from __future__ import annotations

import torch
from torch import Tensor

EPS = torch.finfo(torch.float32).eps  # smallest scale: an all-zero channel quantizes to 0


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax): narrow signed for symmetric (int8 -127..127), unsigned for asymmetric."""
    if symmetric:
        q = 2 ** (bits - 1) - 1
        return -q, q
    return 0, 2**bits - 1


def qparams(lo: Tensor, hi: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """(scale float32, zero_point int32) covering [lo, hi] widened to include 0, elementwise
    over lo/hi (one entry per channel, or 0-d for a whole tensor)."""
    qmin, qmax = qrange(bits, symmetric)
    lo = lo.detach().float().clamp(max=0.0)
    hi = hi.detach().float().clamp(min=0.0)
    if symmetric:
        scale = (torch.maximum(-lo, hi) / qmax).clamp(min=EPS)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    scale = ((hi - lo) / (qmax - qmin)).clamp(min=EPS)
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return scale, zero_point


def _bcast(t: Tensor, x: Tensor, axis: int | None) -> Tensor:
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, symmetric: bool,
             axis: int | None = None) -> Tensor:
    """Integer codes (int32) of `x`: clamp(round(x / scale) + zero_point); round half to even,
    x * (1 / scale) as the fake-quant ops compute it."""
    qmin, qmax = qrange(bits, symmetric)
    inv = _bcast(1.0 / scale, x, axis)
    q = torch.round(x.float() * inv) + _bcast(zero_point, x, axis)
    return q.clamp(qmin, qmax).to(torch.int32)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None = None) -> Tensor:
    return (q - _bcast(zero_point, q, axis)).float() * _bcast(scale, q, axis)


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, symmetric: bool,
                  axis: int | None = None) -> Tensor:
    """dequantize(quantize(x)) with a straight-through gradient (1 inside the grid's range,
    0 where the value was clipped). `axis` is the channel dim of a per-channel scale."""
    qmin, qmax = qrange(bits, symmetric)
    dtype = x.dtype
    x = x.float()
    if axis is None:
        out = torch.fake_quantize_per_tensor_affine(
            x, scale.reshape(()).float(), zero_point.reshape(()).int(), qmin, qmax)
    else:
        out = torch.fake_quantize_per_channel_affine(
            x, scale.float(), zero_point.int(), axis % x.dim(), qmin, qmax)
    return out.to(dtype)


def reduce_range(x: Tensor, axis: int | None) -> tuple[Tensor, Tensor]:
    """(min, max) of `x` over everything (axis None) or per index along `axis`."""
    x = x.detach()
    if axis is None:
        return x.min().float(), x.max().float()
    rows = x.movedim(axis, 0).reshape(x.shape[axis], -1)  # (C, rest)
    return rows.amin(1).float(), rows.amax(1).float()


def fake_quantize_per_token(x: Tensor, bits: int, symmetric: bool, channel_dim: int) -> Tensor:
    """Dynamic fake quantization with one min-max scale per token: per position of every dim
    but `channel_dim` (a linear's rows over its features, a conv's pixels over channels)."""
    moved = x.movedim(channel_dim, -1)
    rows = moved.reshape(-1, moved.shape[-1])  # (tokens, C)
    scale, zp = qparams(rows.detach().amin(1), rows.detach().amax(1), bits, symmetric)
    out = fake_quantize(rows, scale, zp, bits, symmetric, axis=0)
    return out.reshape(moved.shape).movedim(-1, channel_dim)
