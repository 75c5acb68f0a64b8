"""`sparseforge::winograd_int8_conv2d`: LANCE int8 Winograd 3x3 stride-1 conv, on the shared
`lib` fragment of ops.py: schema, fake impl, CPU impl (csrc/cpu/winograd_int8.cpp, built per
ISA: avx512_amx, avx512_vnni, avx2, generic, picked at run time), CUDA impl
(triton_winograd.py). What it computes is `winograd_int8_reference` (quant/winograd.py);
arguments come from `pack_weights` / `quantize_weights` there (`WinogradConv2d` builds them).
Every implementation returns channels-last memory."""

from __future__ import annotations

import torch
from torch import Tensor

from ..quant.winograd import tile_grid, winograd_int8_reference
from . import extension
from .ops import _BOUND_FAKES, KERNEL_FILES, KERNEL_VARIANTS, eager_op, kernel_builds, lib

VARIANTS = ("avx512_amx", "avx512_vnni", "avx2", "generic")  # the ISA variants it is built in
FILE = "winograd_int8"

lib.define(
    "winograd_int8_conv2d(Tensor x, Tensor u_packed, Tensor u_sum, Tensor v_scale, "
    "Tensor out_scale, Tensor? bias, int tile, int[] padding, bool relu, Tensor? residual=None, "
    "float x_scale=1.0, int x_zero_point=0, float? y_scale=None, int y_zero_point=0) -> Tensor",
    # every impl takes x and residual in any memory format, so TorchInductor may hand over the
    # channels-last tensors it holds instead of copying them to the strides export traced
    tags=(torch.Tag.flexible_layout,),
)

winograd_int8_conv2d_reference = winograd_int8_reference  # the op's pure-PyTorch twin


@torch.library.register_fake("sparseforge::winograd_int8_conv2d", lib=lib)
def _winograd_int8_conv2d_fake(
    x: Tensor, u_packed: Tensor, u_sum: Tensor, v_scale: Tensor, out_scale: Tensor,
    bias: Tensor | None, tile: int, padding: list[int], relu: bool, residual: Tensor | None = None,
    x_scale: float = 1.0, x_zero_point: int = 0, y_scale: float | None = None,
    y_zero_point: int = 0,
) -> Tensor:
    torch._check(tile in (2, 4), lambda: f"tile must be 2 or 4, got {tile}")
    torch._check(x.dim() == 4, lambda: "x must be (N, C, H, W)")
    torch._check(x.dtype in (torch.float32, torch.uint8), lambda: "x must be float32 or uint8")
    torch._check(u_packed.dim() == 4 and u_packed.dtype == torch.int8,
                 lambda: "u_packed must be int8 (a*a, ceil(C/4), Kp, 4): use pack_weights")
    ho, wo, _, _ = tile_grid(x.shape[2], x.shape[3], tile, (padding[0], padding[1]))
    dtype = torch.float32 if y_scale is None else torch.uint8
    # (N, K, Ho, Wo), channels last as the kernels write it
    return x.new_empty((x.shape[0], out_scale.shape[1], ho, wo), dtype=dtype).to(
        memory_format=torch.channels_last)


def cpu_kernel(variant: str | None = None) -> torch._ops.OpOverloadPacket:
    """The compiled C++ op for `variant` (default: the best this CPU runs), built on first use."""
    return extension.kernel("winograd_int8_conv2d", variant, file=FILE, variants=VARIANTS)


def _winograd_int8_conv2d_cpu(*args: object, **kwargs: object) -> Tensor:
    if not kernel_builds("winograd_int8_conv2d"):
        return _channels_last(winograd_int8_reference(*args, **kwargs))
    return cpu_kernel()(*args, **kwargs)


def _channels_last(y: Tensor) -> Tensor:
    """Every implementation returns channels-last memory, as the fake impl says (the C++ kernel
    writes 16 channels of a pixel at once)."""
    return y.contiguous(memory_format=torch.channels_last)


def _winograd_int8_conv2d_cuda(*args: object, **kwargs: object) -> Tensor:
    from . import triton_winograd  # imported here: keeps `import sparseforge` free of triton

    if not triton_winograd.has_triton():
        raise RuntimeError("sparseforge::winograd_int8_conv2d on CUDA runs a Triton kernel and "
                           "triton is not installed; pip install triton, or call "
                           "winograd_int8_conv2d_reference")
    return _channels_last(triton_winograd.winograd_int8_conv2d(*args, **kwargs))


lib.impl("winograd_int8_conv2d", _winograd_int8_conv2d_cpu, "CPU")
lib.impl("winograd_int8_conv2d", _winograd_int8_conv2d_cuda, "CUDA")
# graph/lower.py may call the C++ kernel itself (`ops.bound_kernel`)
_BOUND_FAKES["winograd_int8_conv2d"] = _winograd_int8_conv2d_fake
KERNEL_FILES["winograd_int8_conv2d"] = FILE
KERNEL_VARIANTS["winograd_int8_conv2d"] = VARIANTS


def winograd_int8_conv2d(
    x: Tensor, u_packed: Tensor, u_sum: Tensor, v_scale: Tensor, out_scale: Tensor,
    bias: Tensor | None, tile: int, padding: list[int], relu: bool, residual: Tensor | None = None,
    x_scale: float = 1.0, x_zero_point: int = 0, y_scale: float | None = None,
    y_zero_point: int = 0,
) -> Tensor:
    """`torch.ops.sparseforge.winograd_int8_conv2d`: the fast path of `winograd_int8_reference`;
    `residual` (shaped like the output) is added before the relu. A uint8 `x` with `x_scale`
    and `x_zero_point`, and `y_scale` / `y_zero_point` for a uint8 output, are PT2E's
    dequantize and quantize_per_tensor folded into the op (by the fusion planner, graph.lower)."""
    return eager_op("winograd_int8_conv2d", x)(
        x, u_packed, u_sum, v_scale, out_scale, bias, tile, list(padding), relu, residual,
        x_scale, x_zero_point, y_scale, y_zero_point)
