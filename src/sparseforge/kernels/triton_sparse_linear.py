"""Triton kernels (CUDA) for the weight-sparse linears in ops.py: `bsr_linear`, `bcr_linear` and
`nm_linear` for float16 / bfloat16 / float32 with float32 accumulation, registered as the CUDA
impl of those ops, so `torch.ops.sparseforge.{bsr,bcr,nm}_linear` on CUDA tensors land here.
Untuned: written and checked against the `*_reference` twins in Triton's interpreter
(TRITON_INTERPRET=1, on CPU tensors); no GPU was measured, block sizes are first guesses.

- BSR: a program per (block row, batch tile) walks its stored tiles, tl.dot per tile.
- BCR: a program per (stored block, batch tile) gathers the block's kept input columns, multiplies
  by its compacted (kc, kr) tile and scatters into its kept output rows by float32 atomic add.
- N:M: a program per (output tile, batch tile) reads only the kept values and their in-group
  indices, expands them to a dense tile in registers and feeds tl.dot (the weight bytes fall to
  n/m of dense plus one index byte per value).
Bias, residual and relu are applied in the kernel (BSR, N:M) or on the float32 sums (BCR); GELU
runs after, as in the C++ kernels."""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import ACTIVATIONS


@functools.cache
def has_triton() -> bool:
    """Whether triton is importable (the kernels below exist only then)."""
    return importlib.util.find_spec("triton") is not None


BLOCK_N = 64  # output features per N:M program
BLOCK_K_NM = 64  # input features per N:M step (groups of m padded to a power of two)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _pow2(v: int, floor: int = 16) -> int:
    """The next power of two >= v and >= floor (tl.arange sizes; tl.dot wants >= 16)."""
    return max(floor, 1 << max(0, int(v) - 1).bit_length())


def _block_b(b: int) -> int:
    return 16 if b <= 16 else 64  # batch rows per program


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # float32: no TF32 rounding


def _check_inputs(op: str, x: Tensor, weights: Tensor, bias: Tensor | None,
                  residual: Tensor | None, activation: str, out_features: int) -> None:
    torch._check(x.dtype in DTYPES, lambda: f"{op}: x must be float16/bfloat16/float32, got {x.dtype}")
    torch._check(weights.dtype == x.dtype,
                 lambda: f"{op}: weights are {weights.dtype} but x is {x.dtype}; cast one")
    torch._check(activation in ACTIVATIONS,
                 lambda: f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    want = (*x.shape[:-1], out_features)
    if residual is not None:
        torch._check(tuple(residual.shape) == want,
                     lambda: f"residual {tuple(residual.shape)} must be shaped like the output {want}")
    if bias is not None:
        torch._check(bias.numel() == out_features, lambda: f"bias must be ({out_features},)")


def _gelu(y: Tensor, activation: str) -> Tensor:
    if activation in ("gelu", "gelu_tanh"):
        return F.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")
    return y


if has_triton():
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton

    @triton.jit
    def _store_epilogue(acc, out_ptr, bias_ptr, res_ptr, offs_b, offs_n, mask, N,
                        HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr):
        """out[b, n] = relu?(acc + bias[n] + residual[b, n]), cast to out's dtype."""
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        if HAS_RES:
            acc += tl.load(res_ptr + offs_b[:, None] * N + offs_n[None, :], mask=mask,
                           other=0.0).to(tl.float32)
        if RELU:
            acc = tl.maximum(acc, 0.0)
        tl.store(out_ptr + offs_b[:, None] * N + offs_n[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _bsr_kernel(
        x_ptr, crow_ptr, col_ptr, vt_ptr, bias_ptr, res_ptr, out_ptr, B, K, N, bh, bw,
        HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
        PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
    ):
        """Block row i, batch tile pid_b: acc (BB, bh) += x[:, cols of tile] @ tile^T per stored
        tile, tiles stored transposed (bw, bh)."""
        i, pid_b = tl.program_id(0), tl.program_id(1)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        r, c = tl.arange(0, BH), tl.arange(0, BW)
        b_mask = offs_b < B
        lo = tl.load(crow_ptr + i).to(tl.int64)
        hi = tl.load(crow_ptr + i + 1).to(tl.int64)
        acc = tl.zeros((BLOCK_B, BH), dtype=tl.float32)
        for p in range(lo, hi):
            k = tl.load(col_ptr + p).to(tl.int64) * bw + c  # (BW,)
            xk = tl.load(x_ptr + offs_b[:, None] * K + k[None, :],
                         mask=b_mask[:, None] & (c < bw)[None, :] & (k < K)[None, :],
                         other=0.0)  # (BB, BW)
            tile = tl.load(vt_ptr + p * bw * bh + c[:, None] * bh + r[None, :],
                           mask=(c < bw)[:, None] & (r < bh)[None, :], other=0.0)  # (BW, BH)
            acc += tl.dot(xk, tile, input_precision=PRECISION)
        offs_n = i * bh + r
        _store_epilogue(acc, out_ptr, bias_ptr, res_ptr, offs_b, offs_n,
                        b_mask[:, None] & ((r < bh) & (offs_n < N))[None, :], N,
                        HAS_BIAS, HAS_RES, RELU)

    @triton.jit
    def _bcr_kernel(
        x_ptr, blk_ptr, kr_ptr, kc_ptr, roff_ptr, coff_ptr, voff_ptr, rows_ptr, cols_ptr, vt_ptr,
        out_ptr, B, K, N, r, c, nbc,
        PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr,
    ):
        """Stored block s, batch tile pid_b: out[:, kept rows] += x[:, kept cols] @ tile^T, the
        compacted tile stored transposed (kc, kr); float32 atomics meet the blocks of a row."""
        s, pid_b = tl.program_id(0), tl.program_id(1)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        b_mask = offs_b < B
        blk = tl.load(blk_ptr + s).to(tl.int64)
        kr, kc = tl.load(kr_ptr + s), tl.load(kc_ptr + s)
        ri, ci = tl.arange(0, KR), tl.arange(0, KC)
        r_ok, c_ok = ri < kr, ci < kc
        rows = (blk // nbc) * r + tl.load(rows_ptr + tl.load(roff_ptr + s) + ri, mask=r_ok,
                                          other=0).to(tl.int64)  # (KR,)
        cols = (blk % nbc) * c + tl.load(cols_ptr + tl.load(coff_ptr + s) + ci, mask=c_ok,
                                         other=0).to(tl.int64)  # (KC,)
        xk = tl.load(x_ptr + offs_b[:, None] * K + cols[None, :],
                     mask=b_mask[:, None] & (c_ok & (cols < K))[None, :], other=0.0)  # (BB, KC)
        tile = tl.load(vt_ptr + tl.load(voff_ptr + s) + ci[:, None] * kr + ri[None, :],
                       mask=c_ok[:, None] & r_ok[None, :], other=0.0)  # (KC, KR)
        acc = tl.dot(xk, tile, input_precision=PRECISION)  # (BB, KR)
        tl.atomic_add(out_ptr + offs_b[:, None] * N + rows[None, :], acc,
                      mask=b_mask[:, None] & (r_ok & (rows < N))[None, :])

    @triton.jit
    def _nm_kernel(
        x_ptr, val_ptr, idx_ptr, bias_ptr, res_ptr, out_ptr, B, K, N, G, m,
        HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
        PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_G: tl.constexpr, NN: tl.constexpr, MP: tl.constexpr,
    ):
        """Output tile pid_n, batch tile pid_b: per step of BLOCK_G groups, expand the kept
        values (BN, BG, n) to a dense (BN, BG, MP) tile (MP: m padded to a power of two; the
        padding columns read x as 0) and tl.dot it with x's matching (BB, BG * MP) slice."""
        pid_n, pid_b = tl.program_id(0), tl.program_id(1)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        b_mask, n_mask = offs_b < B, offs_n < N
        g_ar, p_ar = tl.arange(0, BLOCK_G), tl.arange(0, MP)
        S = G * NN  # stored entries per row
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        for g0 in range(0, G, BLOCK_G):
            g = g0 + g_ar  # (BG,)
            ng_mask = n_mask[:, None] & (g < G)[None, :]  # (BN, BG)
            dense = tl.zeros((BLOCK_N, BLOCK_G, MP), dtype=tl.float32)
            for j in tl.static_range(NN):
                q = offs_n[:, None].to(tl.int64) * S + g[None, :] * NN + j  # (BN, BG)
                v = tl.load(val_ptr + q, mask=ng_mask, other=0.0).to(tl.float32)
                ix = tl.load(idx_ptr + q, mask=ng_mask, other=0).to(tl.int32)
                dense += tl.where(p_ar[None, None, :] == ix[:, :, None], v[:, :, None], 0.0)
            k = g[:, None] * m + p_ar[None, :]  # (BG, MP): input feature of each slot
            k_ok = (g < G)[:, None] & (p_ar < m)[None, :]
            xk = tl.load(x_ptr + offs_b[:, None, None] * K + k[None, :, :],
                         mask=b_mask[:, None, None] & k_ok[None, :, :], other=0.0)  # (BB, BG, MP)
            xk = tl.reshape(xk, (BLOCK_B, BLOCK_G * MP))
            w = tl.reshape(dense, (BLOCK_N, BLOCK_G * MP)).to(x_ptr.dtype.element_ty)
            acc += tl.dot(xk, tl.trans(w), input_precision=PRECISION)
        _store_epilogue(acc, out_ptr, bias_ptr, res_ptr, offs_b, offs_n,
                        b_mask[:, None] & n_mask[None, :], N, HAS_BIAS, HAS_RES, RELU)

    def _flags(bias: Tensor | None, residual: Tensor | None, activation: str) -> dict:
        return {"HAS_BIAS": bias is not None, "HAS_RES": residual is not None,
                "RELU": activation == "relu"}

    @triton_op("sparseforge::_triton_bsr_linear", mutates_args={})
    def _triton_bsr_linear(
        x: Tensor, crow_indices: Tensor, col_indices: Tensor, values_t: Tensor,
        bias: Tensor | None, out_features: int, activation: str = "none",
        residual: Tensor | None = None,
    ) -> Tensor:
        _check_inputs("bsr_linear", x, values_t, bias, residual, activation, out_features)
        _, bw, bh = values_t.shape
        k = x.shape[-1]
        x2 = x.reshape(-1, k).contiguous()  # (B, K)
        b, nbr = x2.shape[0], crow_indices.numel() - 1
        out = torch.empty(b, out_features, device=x.device, dtype=x.dtype)  # (B, N)
        res = None if residual is None else residual.reshape(b, out_features).contiguous()
        if b and out_features:
            bb = _block_b(b)
            wrap_triton(_bsr_kernel)[(nbr, triton.cdiv(b, bb))](
                x2, crow_indices.contiguous(), col_indices.contiguous(), values_t.contiguous(),
                bias if bias is None else bias.contiguous(), res, out, b, k, out_features, bh, bw,
                **_flags(bias, residual, activation), PRECISION=_dot_precision(x.dtype),
                BLOCK_B=bb, BH=_pow2(bh), BW=_pow2(bw),
            )
        return _gelu(out, activation).reshape(*x.shape[:-1], out_features)

    def _bcr_block_meta(group_shapes: Tensor, group_ptr: Tensor) -> tuple[Tensor, ...]:
        """Per stored block: kr, kc and its start in row_indices, col_indices and values_t."""
        counts = (group_ptr[1:] - group_ptr[:-1]).long()  # (G,)
        shapes = group_shapes.long()
        kr = torch.repeat_interleave(shapes[:, 0], counts)  # (nstored,)
        kc = torch.repeat_interleave(shapes[:, 1], counts)

        def starts(sizes: Tensor) -> Tensor:
            return torch.cumsum(sizes, 0) - sizes  # exclusive prefix sum

        return kr, kc, starts(kr), starts(kc), starts(kr * kc)

    @triton_op("sparseforge::_triton_bcr_linear", mutates_args={})
    def _triton_bcr_linear(
        x: Tensor, block_ids: Tensor, group_shapes: Tensor, group_ptr: Tensor,
        row_indices: Tensor, col_indices: Tensor, values_t: Tensor, bias: Tensor | None,
        out_features: int, block_rows: int, block_cols: int, activation: str = "none",
        residual: Tensor | None = None,
    ) -> Tensor:
        _check_inputs("bcr_linear", x, values_t, bias, residual, activation, out_features)
        k = x.shape[-1]
        x2 = x.reshape(-1, k).contiguous()  # (B, K)
        b, nstored = x2.shape[0], block_ids.numel()
        out = torch.zeros(b, out_features, device=x.device, dtype=torch.float32)  # (B, N) sums
        if b and out_features and nstored:
            kr, kc, roff, coff, voff = _bcr_block_meta(group_shapes, group_ptr)
            bb = _block_b(b)
            wrap_triton(_bcr_kernel)[(nstored, triton.cdiv(b, bb))](
                x2, block_ids.contiguous(), kr, kc, roff, coff, voff, row_indices.contiguous(),
                col_indices.contiguous(), values_t.contiguous(), out, b, k, out_features,
                block_rows, block_cols, -(-k // block_cols),
                PRECISION=_dot_precision(x.dtype), BLOCK_B=bb,
                KR=_pow2(int(group_shapes[:, 0].max())), KC=_pow2(int(group_shapes[:, 1].max())),
            )
        if bias is not None:
            out += bias.float()
        if residual is not None:
            out += residual.reshape(b, out_features).float()
        if activation == "relu":
            out.relu_()
        out = _gelu(out, activation).to(x.dtype)
        return out.reshape(*x.shape[:-1], out_features)

    @triton_op("sparseforge::_triton_nm_linear", mutates_args={})
    def _triton_nm_linear(
        x: Tensor, values: Tensor, indices: Tensor, bias: Tensor | None, out_features: int,
        n: int, m: int, activation: str = "none", residual: Tensor | None = None,
    ) -> Tensor:
        _check_inputs("nm_linear", x, values, bias, residual, activation, out_features)
        k = x.shape[-1]
        torch._check(k % m == 0, lambda: f"x has {k} input features, not a multiple of m={m}")
        x2 = x.reshape(-1, k).contiguous()  # (B, K)
        b, groups = x2.shape[0], k // m
        out = torch.empty(b, out_features, device=x.device, dtype=x.dtype)  # (B, N)
        res = None if residual is None else residual.reshape(b, out_features).contiguous()
        if b and out_features:
            bb, mp = _block_b(b), _pow2(m, floor=1)
            block_g = max(1, BLOCK_K_NM // mp, 16 // mp)
            wrap_triton(_nm_kernel)[(triton.cdiv(out_features, BLOCK_N), triton.cdiv(b, bb))](
                x2, values.contiguous(), indices.contiguous(),
                bias if bias is None else bias.contiguous(), res, out, b, k, out_features,
                groups, m, **_flags(bias, residual, activation),
                PRECISION=_dot_precision(x.dtype), BLOCK_B=bb, BLOCK_N=BLOCK_N,
                BLOCK_G=block_g, NN=n, MP=mp,
            )
        return _gelu(out, activation).reshape(*x.shape[:-1], out_features)

    bsr_linear = _triton_bsr_linear
    bcr_linear = _triton_bcr_linear
    nm_linear = _triton_nm_linear
