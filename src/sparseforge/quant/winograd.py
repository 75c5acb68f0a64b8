"""LANCE int8 Winograd convolution (3x3, stride 1), F(2x2,3x3) and F(4x4,3x3), as plain PyTorch:
the transform matrices, an fp32 Winograd conv (equal to F.conv2d), and the quantized algorithm
(`winograd_int8_reference`) that the C++ / Triton kernels of `sparseforge::winograd_int8_conv2d`
compute. U = G g G^T per (position, out channel), V = B^T d B per position (or per position and
channel), both int8 in the Winograd domain, int32 GEMMs over channels, dequantize, Y = A^T M A."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

TILES = (2, 4)  # output tile m of F(m x m, 3 x 3); the input tile is alpha = m + 2
QMAX = 127  # int8 symmetric narrow grid -127..127 (so +128 fits uint8 for VNNI)
K_ALIGN, C_ALIGN = 16, 4  # packed U: out channels padded to 16 (one zmm), channels to 4 (a dword)


@functools.cache
def transforms(tile: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B^T (a, a), G (a, 3), A^T (m, a)) in float64 for F(m, 3), a = m + 2 (Lavin & Gray; F(4,3)
    interpolates at 0, +-1, +-2 and infinity: five finite points, +-1/2 only enter F(6,3))."""
    if tile == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif tile == 4:
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"Winograd tile must be one of {TILES} (F(2,3) or F(4,3)), got {tile}")
    return tuple(torch.tensor(t, dtype=torch.float64) for t in (bt, g, at))


def _pair(p: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))


def tile_grid(h: int, w: int, tile: int, padding: tuple[int, int]) -> tuple[int, int, int, int]:
    """(Ho, Wo, tiles down, tiles across) of a 3x3 stride-1 conv of an (h, w) input."""
    ho, wo = h + 2 * padding[0] - 2, w + 2 * padding[1] - 2
    if ho < 1 or wo < 1:
        raise ValueError(f"input {h}x{w} with padding {padding} is smaller than the 3x3 kernel")
    return ho, wo, -(-ho // tile), -(-wo // tile)


def input_transform(x: Tensor, tile: int, padding: tuple[int, int]) -> Tensor:
    """V = B^T d B of every (a, a) input tile d (stride m), zero padded: (a*a, C, P) with tiles
    P = N * tiles_down * tiles_across ordered (n, ty, tx), in x's dtype."""
    n, c, h, w = x.shape
    _, _, th, tw = tile_grid(h, w, tile, padding)
    a = tile + 2
    bt = transforms(tile)[0].to(x)
    xp = F.pad(x, (padding[1], tw * tile + 2 - w - padding[1], padding[0], th * tile + 2 - h - padding[0]))
    d = xp.unfold(2, a, tile).unfold(3, a, tile)  # (N, C, th, tw, a, a)
    v = torch.einsum("ia,ncyxab,jb->ijcnyx", bt, d, bt)  # (a, a, C, N, th, tw)
    return v.reshape(a * a, c, n * th * tw)


def weight_transform(weight: Tensor, tile: int) -> Tensor:
    """U = G g G^T of every (K, C, 3, 3) filter: (a*a, K, C), in weight's dtype."""
    g = transforms(tile)[1].to(weight)
    u = torch.einsum("ia,kcab,jb->ijkc", g, weight, g)  # (a, a, K, C)
    return u.reshape(-1, *weight.shape[:2])


def output_transform(m: Tensor, tile: int, n: int, ho: int, wo: int) -> Tensor:
    """Y = A^T M A of the (a*a, K, P) products, tiles stitched and cropped: (N, K, Ho, Wo)."""
    a = tile + 2
    k, p = m.shape[1], m.shape[2]
    th, tw = -(-ho // tile), -(-wo // tile)
    assert p == n * th * tw, "tile count does not match the output size"
    at = transforms(tile)[2].to(m)
    y = torch.einsum("ia,abkz,jb->kzij", at, m.reshape(a, a, k, p), at)  # (K, P, m, m)
    y = y.reshape(k, n, th, tw, tile, tile).permute(1, 0, 2, 4, 3, 5)  # (N, K, th, m, tw, m)
    return y.reshape(n, k, th * tile, tw * tile)[:, :, :ho, :wo]


def winograd_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, tile: int,
                    padding: int | tuple[int, int] = 0) -> Tensor:
    """fp32 Winograd F(m,3) conv: F.conv2d(x, weight, bias, padding=padding) up to rounding."""
    pad = _pair(padding)
    ho, wo, _, _ = tile_grid(x.shape[2], x.shape[3], tile, pad)
    v, u = input_transform(x, tile, pad), weight_transform(weight.to(x), tile)
    y = output_transform(torch.matmul(u, v), tile, x.shape[0], ho, wo)  # (a*a, K, P) -> (N, K, Ho, Wo)
    return y if bias is None else y + bias.to(y).reshape(1, -1, 1, 1)


# --- the quantized algorithm -----------------------------------------------------------------


def quantize_symmetric(t: Tensor, scale: Tensor, t_scale: float = 1.0) -> Tensor:
    """int8 codes round(t * (t_scale / scale)) (half to even), clamped to -127..127, as int32;
    `scale` broadcasts against t; `t_scale` is what t's units are worth (a quantized input's
    scale). fp32 like the kernels: (1 / scale) * t_scale and the product are fp32-rounded."""
    inv = (1.0 / scale.float()) * torch.tensor(t_scale, dtype=torch.float32)
    return torch.round(t.float() * inv).clamp(-QMAX, QMAX).to(torch.int32)


def quantize_uint8(y: Tensor, scale: float, zero_point: int) -> Tensor:
    """PT2E's quantize_per_tensor to uint8, in fp32 as the kernels' epilogue:
    clamp(round_half_even(y * (1 / scale)) + zero_point, 0, 255)."""
    inv = torch.tensor(1.0 / scale, dtype=torch.float32)
    return (torch.round(y.float() * inv) + zero_point).clamp(0, 255).to(torch.uint8)


def quantize_weights(weight: Tensor, v_scale: Tensor, tile: int) -> tuple[Tensor, Tensor]:
    """(q_u int8 (a*a, K, C), out_scale float32 (a*a, K)): U' = U * v_scale (V's scale per
    (position, channel) folded into U, so the GEMM over channels stays integer), quantized per
    (position, out channel) by max |U'|; M = out_scale * sum_c q_u * q_v."""
    u = weight_transform(weight.detach().double(), tile) * v_scale.double()[:, None, :]  # (aa, K, C)
    scale = (u.abs().amax(2) / QMAX).clamp(min=torch.finfo(torch.float32).tiny).float()  # (aa, K)
    return quantize_symmetric(u, scale[:, :, None]).to(torch.int8), scale


def pack_weights(q_u: Tensor) -> tuple[Tensor, Tensor]:
    """(u_packed int8 (a*a, ceil(C/4), Kp, 4), u_sum int32 (a*a, K)) from q_u (a*a, K, C): for
    each position, groups of 4 channels, then out channels padded to Kp = 16 * ceil(K/16), so one
    64-byte load is 16 out channels x 4 channels (vpdpbusd's operand). u_sum = sum_c q_u is the
    compensation of the VNNI path's uint8 (+128) inputs."""
    aa, k, c = q_u.shape
    kp, cb = -(-k // K_ALIGN) * K_ALIGN, -(-c // C_ALIGN)
    padded = q_u.new_zeros(aa, kp, cb * C_ALIGN)
    padded[:, :k, :c] = q_u
    packed = padded.reshape(aa, kp, cb, C_ALIGN).permute(0, 2, 1, 3).contiguous()
    return packed, q_u.sum(2, dtype=torch.int32)


def unpack_weights(u_packed: Tensor, k: int, c: int) -> Tensor:
    """q_u (a*a, K, C) int8 from `pack_weights`' layout."""
    aa, cb, kp, g = u_packed.shape
    return u_packed.permute(0, 2, 1, 3).reshape(aa, kp, cb * g)[:, :k, :c]


def output_epilogue(y: Tensor, bias: Tensor | None, residual: Tensor | None, relu: bool) -> Tensor:
    """relu(y + bias + residual) in y's dtype: the op's epilogue after the output transform,
    shared by the reference (float64) and the CUDA path (float32)."""
    if bias is not None:
        y = y + bias.to(y.dtype).reshape(1, -1, 1, 1)
    if residual is not None:
        y = y + residual.to(y.dtype)
    return torch.relu(y) if relu else y


def winograd_int8_reference(
    x: Tensor, u_packed: Tensor, u_sum: Tensor, v_scale: Tensor, out_scale: Tensor,
    bias: Tensor | None, tile: int, padding: list[int], relu: bool, residual: Tensor | None = None,
    x_scale: float = 1.0, x_zero_point: int = 0, y_scale: float | None = None,
    y_zero_point: int = 0,
) -> Tensor:
    """What `sparseforge::winograd_int8_conv2d` computes, in PyTorch: V = B^T d B (fp32),
    q_v = round(V / v_scale) per (position, channel), exact int64 GEMM with q_u per position,
    M = acc * out_scale (a*a, K), Y = A^T M A + bias + residual, then relu; float64 after the
    GEMM. A uint8 `x` is PT2E's quantized activation: d = x - x_zero_point, and V's codes are
    round(V * x_scale / v_scale). With `y_scale` the output is quantized to uint8
    (`quantize_uint8`) from its fp32 value.
    `u_sum` is the VNNI kernel's input; checked here, unused."""
    pad = _pair(padding)
    n, c, h, w = x.shape
    k = out_scale.shape[1]
    ho, wo, _, _ = tile_grid(h, w, tile, pad)
    q_u = unpack_weights(u_packed, k, c).long()  # (aa, K, C)
    torch._check(torch.equal(q_u.sum(2), u_sum.long()), lambda: "u_sum must be q_u.sum(channels)")
    q_v = quantized_input_transform(x, v_scale, tile, pad, x_scale, x_zero_point).long()
    acc = torch.matmul(q_u, q_v)  # (aa, K, P) int64, exact
    m = acc.double() * out_scale.double()[:, :, None]
    y = output_epilogue(output_transform(m, tile, n, ho, wo), bias, residual, relu).float()
    return y if y_scale is None else quantize_uint8(y, y_scale, y_zero_point)


def quantized_input_transform(x: Tensor, v_scale: Tensor, tile: int, padding: tuple[int, int],
                              x_scale: float = 1.0, x_zero_point: int = 0) -> Tensor:
    """V's int8 codes (a*a, C, P) as int32: of x (float32), or of a uint8 x with its scale and
    zero point (V made from x - zero point, exact, and quantized by x_scale / v_scale)."""
    d = (x.int() - x_zero_point).float() if x.dtype == torch.uint8 else x.float()
    return quantize_symmetric(input_transform(d, tile, padding), v_scale[:, :, None], x_scale)
