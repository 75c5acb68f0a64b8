"""Semi-structured activation sparsity for convolutions (Grimaldi et al. 2023).

A convolution is a GEMM on its im2col matrix, whose rows are (channel, kh, kw) and whose
columns are output positions: y (O, L) = W (O, K) @ im2col(x) (K, L). A mask that zeroes whole
tiles of that matrix lets the runtime run a smaller GEMM. Two tile geometries, each a static
per-layer mask chosen during training and fixed at deploy:

- `channel` (tiles of whole rows, K): a tile is `tile[0]` input channels, i.e. the
  `tile[0] * kh * kw` im2col rows of those channels. The mask lives on the input feature map
  (x * m[c]); the runtime convolves only the kept channels with the kept weight columns
  (fewer K rows, same dense conv engine).
- `spatial` (tiles of whole columns, L): a tile is a `tile[0] x tile[1]` block of output
  positions. A zero im2col column is the conv's output at that position, so the mask lives on
  the conv's output feature map (y * m[h, w]: the zeros are whole (1 x C) rows of the next
  layer's im2col); the runtime gathers only the kept columns and runs a GEMM with fewer N.

This module holds the geometry (tile grids, masks, tile choice) and the runtime:
`semi_structured_conv2d` skips the masked tiles, `semi_structured_conv2d_reference` is the same
masked conv through plain F.conv2d. The training module is in `semi_structured.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Geometry = Literal["channel", "spatial"]
GEOMETRIES: tuple[str, ...] = ("channel", "spatial")
DEFAULT_TILE: dict[str, tuple[int, ...]] = {"channel": (4,), "spatial": (2, 2)}
_IM2COL_BYTES = 2 << 20  # spatial runtime: batch chunk whose gathered im2col stays cache-sized


def check_tile(geometry: str, tile: tuple[int, ...]) -> tuple[int, ...]:
    """`tile` validated for `geometry`: (channels,) for channel, (rows, cols) for spatial."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; choose from {GEOMETRIES}")
    want = 1 if geometry == "channel" else 2
    tile = tuple(int(t) for t in tile)
    if len(tile) != want or any(t < 1 for t in tile):
        raise ValueError(
            f"a {geometry} tile is {want} positive integer(s) "
            f"({'channels' if want == 1 else 'output rows, output columns'}), got {list(tile)}"
        )
    return tile


def conv_out_size(size: tuple[int, int], conv: nn.Conv2d) -> tuple[int, int]:
    """(OH, OW) of `conv` on an input of spatial `size`."""
    return tuple(  # type: ignore[return-value]
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(
            size, conv.padding, conv.dilation, conv.kernel_size, conv.stride, strict=True
        )
    )


# --- masks: tiles -> feature map -> im2col layout ---------------------------------------------


def tile_grid(
    geometry: str, tile: tuple[int, ...], channels: int, out_size: tuple[int, int]
) -> tuple[int, ...]:
    """Shape of the tile mask: (ceil(C / t),) or (ceil(OH / th), ceil(OW / tw)); edge tiles
    are partial when the size is not a multiple of the tile."""
    if geometry == "channel":
        return (math.ceil(channels / tile[0]),)
    return tuple(math.ceil(n / t) for n, t in zip(out_size, tile, strict=True))


def expand_tiles(tile_keep: Tensor, tile: tuple[int, ...], size: tuple[int, ...]) -> Tensor:
    """Element mask of `size` ((C,) or (OH, OW)) from a tile mask: each tile entry repeated
    over its tile, edge tiles cut to the size."""
    out = tile_keep
    for dim, (t, n) in enumerate(zip(tile, size, strict=True)):
        out = out.repeat_interleave(t, dim=dim).narrow(dim, 0, n)
    return out


def feature_map_mask(geometry: str, keep: Tensor) -> Tensor:
    """The element mask as a broadcastable feature-map mask: (1, C, 1, 1) on the conv's input
    (channel) or (1, 1, OH, OW) on its output (spatial)."""
    return keep.view(1, -1, 1, 1) if geometry == "channel" else keep.view(1, 1, *keep.shape)


def im2col_mask(
    geometry: str,
    keep: Tensor,
    channels: int,
    kernel_size: tuple[int, int],
    out_size: tuple[int, int],
) -> Tensor:
    """The mask in GEMM layout, (C * kh * kw, OH * OW) in F.unfold's row order (c, kh, kw):
    whole rows (channel) or whole columns (spatial) are False."""
    rows, cols = channels * kernel_size[0] * kernel_size[1], out_size[0] * out_size[1]
    if geometry == "channel":
        per_row = keep.repeat_interleave(kernel_size[0] * kernel_size[1])  # (K,)
        return per_row[:, None].expand(rows, cols)
    return keep.reshape(1, cols).expand(rows, cols)


def choose_tiles(scores: Tensor, ratio: float, sizes: Tensor | None = None) -> Tensor:
    """Tile keep-mask masking the lowest-scoring tiles whose elements (`sizes`, default one
    per tile: edge tiles may be partial) come closest to `ratio` of the total. Ties go to the
    lower index, so a fixed ranking gives nested masks as the ratio grows."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"masked ratio must be in [0, 1], got {ratio}")
    flat = scores.flatten()
    sizes = torch.ones_like(flat) if sizes is None else sizes.flatten().to(flat)
    order = torch.sort(flat, stable=True).indices
    cum = torch.cat([flat.new_zeros(1), sizes[order].cumsum(0)])  # masked elements per count
    n_masked = int((cum - ratio * sizes.sum()).abs().argmin())
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=scores.device)
    keep[order[:n_masked]] = False
    return keep.view(scores.shape)


def choose_run(scores: Tensor, ratio: float, sizes: Tensor | None = None) -> Tensor:
    """Like `choose_tiles`, but the kept tiles are one contiguous run (1-D scores): the window
    of that many tiles with the highest total score. The channel runtime then slices its input
    (a view) instead of gathering the kept channels."""
    n_keep = int(choose_tiles(scores, ratio, sizes).sum())
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_keep:
        window = scores.flatten().float().cumsum(0)
        totals = window[n_keep - 1:] - torch.cat([window.new_zeros(1), window[:-n_keep]])
        start = int(totals.argmax())  # ties: the lowest start
        keep[start : start + n_keep] = True
    return keep.view(scores.shape)


def _tiled(values: Tensor, tile: tuple[int, ...], grid: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Per-tile sums of `values` ((C,) or (OH, OW)) and per-tile element counts."""
    pad, shape = [], []
    for n, t, g in zip(values.shape, tile, grid, strict=True):
        pad = [0, g * t - n, *pad]
        shape += [g, t]
    dims = tuple(range(1, len(shape), 2))
    total = F.pad(values.float(), pad).view(shape).sum(dims)
    count = F.pad(torch.ones_like(values, dtype=torch.float), pad).view(shape).sum(dims)
    return total, count


def tile_mean(values: Tensor, tile: tuple[int, ...], grid: tuple[int, ...]) -> Tensor:
    """Mean of `values` over each tile of `grid`; edge tiles average only their elements."""
    total, count = _tiled(values, tile, grid)
    return total / count


def tile_sizes(size: tuple[int, ...], tile: tuple[int, ...], grid: tuple[int, ...]) -> Tensor:
    """Elements per tile (edge tiles are partial)."""
    return _tiled(torch.zeros(size), tile, grid)[1]


# --- the masked conv: reference and skipping runtime ------------------------------------------


def semi_structured_conv2d_reference(
    x: Tensor, conv: nn.Conv2d, geometry: str, keep: Tensor
) -> Tensor:
    """The masked conv with plain F.conv2d: on the masked input (channel, keep (C,)) or with
    the output masked (spatial, keep (OH, OW))."""
    mask = feature_map_mask(geometry, keep).to(x.dtype)
    if geometry == "channel":
        return conv._conv_forward(x * mask, conv.weight, conv.bias)
    return conv._conv_forward(x, conv.weight, conv.bias) * mask


@dataclass(frozen=True)
class SkipPlan:
    """What the skipping runtime needs for one layer, input size and mask (built once)."""

    geometry: str
    out_size: tuple[int, int]
    kept: Tensor  # channel: kept input channels (Ck,); spatial: kept flat output positions (N,)
    weight: Tensor  # channel: (O, Ck, kh, kw); spatial: (O, kh * kw * C), taps-major
    gather: Tensor | None  # spatial: flat indices into the padded NHWC input, (N * kh * kw,)
    channel_run: tuple[int, int] | None = None  # channel: (first, count) if kept is one range


def _format_of(t: Tensor) -> torch.memory_format:
    cl = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl and not t.is_contiguous() else torch.contiguous_format


def build_plan(conv: nn.Conv2d, geometry: str, keep: Tensor, in_size: tuple[int, int]) -> SkipPlan:
    """Precompute the kept indices and the weight the smaller GEMM uses."""
    out_size = conv_out_size(in_size, conv)
    weight = conv.weight.detach()
    if geometry == "channel":
        kept = keep.nonzero().flatten()
        ends = (int(kept[0]), int(kept[-1])) if kept.numel() else (0, -2)
        run = (ends[0], kept.numel()) if ends[1] - ends[0] + 1 == kept.numel() else None
        return SkipPlan(
            geometry,
            out_size,
            kept,
            weight.index_select(1, kept).contiguous(memory_format=_format_of(weight)),
            None,
            run,
        )
    kept = keep.flatten().nonzero().flatten()  # (N,) flat output positions
    (kh, kw), (sh, sw), (dh, dw), (_, pw) = (
        conv.kernel_size,
        conv.stride,
        conv.dilation,
        conv.padding,
    )
    row, col = kept // out_size[1], kept % out_size[1]
    tap_r = (torch.arange(kh) * dh).repeat_interleave(kw)  # (kh*kw,)
    tap_c = (torch.arange(kw) * dw).repeat(kh)
    width = in_size[1] + 2 * pw
    gather = ((row[:, None] * sh + tap_r) * width + col[:, None] * sw + tap_c).flatten()
    w2 = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).contiguous()  # (O, kh*kw*C)
    return SkipPlan(geometry, out_size, kept.to(weight.device), w2, gather.to(weight.device))


def semi_structured_conv2d(x: Tensor, conv: nn.Conv2d, plan: SkipPlan) -> Tensor:
    """The masked conv computing only the unmasked part: a conv over the kept input channels
    (channel) or an im2col of the kept output positions and a GEMM on them (spatial). Equals
    `semi_structured_conv2d_reference` up to float summation order."""
    b, o = x.shape[0], conv.out_channels
    oh, ow = plan.out_size
    if plan.geometry == "channel":
        if plan.kept.numel() == 0:  # every input channel masked: the conv sees zeros
            out = x.new_zeros(b, o, oh, ow)
            return out if conv.bias is None else out + conv.bias.view(1, o, 1, 1)
        if plan.channel_run is not None:  # one run of channels: a view, no copy
            xk = x.narrow(1, *plan.channel_run)
        else:
            xk = x.index_select(1, plan.kept)  # (B, Ck, H, W)
        return F.conv2d(xk, plan.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    out = x.new_zeros(b, oh * ow, o)  # (B, L, O): NHWC, masked positions stay zero
    n = plan.kept.numel()
    if n:
        ph, pw = conv.padding
        xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph)).contiguous()  # (B, Hp, Wp, C)
        flat = xp.view(b, -1, xp.shape[-1])  # (B, Hp*Wp, C)
        chunk = max(
            1, _IM2COL_BYTES // max(1, plan.gather.numel() * flat.shape[-1] * x.element_size())
        )
        for start in range(0, b, chunk):
            part = flat[start : start + chunk]
            cols = part.index_select(1, plan.gather).view(-1, plan.weight.shape[1])  # (b*N, K)
            y = F.linear(cols, plan.weight, conv.bias)  # (b*N, O)
            out[start : start + chunk].index_copy_(1, plan.kept, y.view(-1, n, o))
    return out.view(b, oh, ow, o).permute(0, 3, 1, 2)  # (B, O, OH, OW), channels_last strides
