"""`WinogradConv2d`: a 3x3 stride-1 Conv2d run as LANCE int8 Winograd F(2,3) or F(4,3) after
calibration (`sparseforge::winograd_int8_conv2d`), with optional Winograd-aware QAT (fake
quantization of U and V in the Winograd domain, straight-through gradients) in train mode.
`quantize_winograd(model, batches, tile)` swaps every eligible conv, calibrates and freezes."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TensorQuant
from .grid import fake_quantize
from .observers import OBSERVERS
from .ptq import _inputs
from .winograd import (
    QMAX,
    TILES,
    input_transform,
    output_transform,
    pack_weights,
    quantize_weights,
    tile_grid,
    weight_transform,
)

VGranularity = Literal["position", "position_channel"]


def unsupported_reason(conv: nn.Module) -> str | None:
    """Why `conv` cannot run as Winograd F(m,3), or None when it can."""
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__} is not a plain nn.Conv2d"
    checks = [(conv.kernel_size == (3, 3), f"kernel {conv.kernel_size}, not 3x3"),
              (conv.stride == (1, 1), f"stride {conv.stride}, not 1"),
              (conv.dilation == (1, 1), f"dilation {conv.dilation}, not 1"),
              (conv.groups == 1, f"groups={conv.groups}, not 1"),
              (isinstance(conv.padding, tuple), f"padding {conv.padding!r} is not numeric"),
              (conv.padding_mode == "zeros", f"padding_mode {conv.padding_mode!r}, not zeros")]
    return next((why for ok, why in checks if not ok), None)


class WinogradConv2d(nn.Module):
    """A 3x3 stride-1 conv as int8 Winograd. Until `freeze()` it runs fp32 F.conv2d, watching V
    while `calibrating`; with `qat=True` train mode fake-quantizes U (per position and out
    channel) and V (observer's scale) in the Winograd domain; after `freeze()`, eval mode calls
    the int8 op. `v_granularity`: one V scale per transform position, or per (position, channel)
    (folded into U so the GEMM stays integer)."""

    def __init__(self, conv: nn.Conv2d, tile: int = 2, v_granularity: VGranularity = "position",
                 observer: str = "minmax", qat: bool = False, relu: bool = False) -> None:
        super().__init__()
        if (why := unsupported_reason(conv)) is not None:
            raise ValueError(f"WinogradConv2d needs a 3x3 stride-1 conv: {why}")
        if tile not in TILES:
            raise ValueError(f"tile must be one of {TILES}, got {tile}")
        if v_granularity not in ("position", "position_channel"):
            raise ValueError("v_granularity must be 'position' or 'position_channel'")
        self.tile, self.v_granularity, self.qat, self.relu = tile, v_granularity, qat, relu
        self.padding = list(conv.padding)
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        spec = TensorQuant(observer="moving_average" if qat and observer == "minmax" else observer)
        self.observer = OBSERVERS.get(spec.observer)(spec, axis=0)
        self.calibrating = False
        self.frozen = False

    @property
    def positions(self) -> int:
        return (self.tile + 2) ** 2

    def _v_rows(self, v: Tensor) -> Tensor:
        """V (a*a, C, P) as (rows, values) for the observer: a row per position or per (position,
        channel)."""
        return v.reshape(self.positions, -1) if self.v_granularity == "position" else v.reshape(-1, v.shape[2])

    def v_scale(self) -> Tensor:
        """The calibrated V scale as (a*a, C) float32 (per-position scales repeated over C)."""
        lo, hi = self.observer.range()
        scale = (torch.maximum(-lo, hi) / QMAX).clamp(min=torch.finfo(torch.float32).tiny).float()
        c = self.weight.shape[1]
        return scale[:, None].expand(-1, c).contiguous() if self.v_granularity == "position" \
            else scale.reshape(self.positions, c)

    @torch.no_grad()
    def freeze(self) -> None:
        """Quantize and pack U with the calibrated V scales; eval mode then runs the int8 op."""
        v_scale = self.v_scale()
        q_u, out_scale = quantize_weights(self.weight, v_scale, self.tile)
        u_packed, u_sum = pack_weights(q_u)
        for name, t in (("u_packed", u_packed), ("u_sum", u_sum), ("v_scale_", v_scale),
                        ("out_scale", out_scale)):
            self.register_buffer(name, t)
        self.frozen = True

    def _qat_forward(self, x: Tensor) -> Tensor:
        """fp32 Winograd with U and V fake-quantized as the int8 op quantizes them (STE)."""
        pad = (self.padding[0], self.padding[1])
        ho, wo, _, _ = tile_grid(x.shape[2], x.shape[3], self.tile, pad)
        v = input_transform(x, self.tile, pad)  # (aa, C, P)
        self.observer.observe(self._v_rows(v.detach()))
        s_v = self.v_scale().to(v)  # (aa, C)
        v_fq = fake_quantize(v.reshape(-1, v.shape[2]), s_v.reshape(-1), torch.zeros(s_v.numel(), dtype=torch.int32),
                             8, True, axis=0).reshape(v.shape)
        u = weight_transform(self.weight, self.tile) * s_v[:, None, :]  # (aa, K, C), V's scale folded
        s_u = (u.detach().abs().amax(2) / QMAX).clamp(min=torch.finfo(torch.float32).tiny)
        u_fq = fake_quantize(u.reshape(-1, u.shape[2]), s_u.reshape(-1), torch.zeros(s_u.numel(), dtype=torch.int32),
                             8, True, axis=0).reshape(u.shape)
        y = output_transform(torch.matmul(u_fq, v_fq / s_v[:, :, None]), self.tile, x.shape[0], ho, wo)
        y = y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)
        return torch.relu(y) if self.relu else y

    def forward(self, x: Tensor) -> Tensor:
        if self.frozen and not self.training:
            from ..kernels import winograd_ops  # imported here: builds nothing until called

            # no cast of a float32 input: export keeps a cast as a node, and PT2E would then
            # quantize the op's input apart from the producer's output (a requantize kernel)
            f32 = x.dtype == torch.float32
            y = winograd_ops.winograd_int8_conv2d(
                x if f32 else x.float(), self.u_packed, self.u_sum, self.v_scale_, self.out_scale,
                None if self.bias is None else self.bias.detach().float(), self.tile, self.padding,
                self.relu)
            return y if f32 else y.to(x.dtype)
        if self.training and self.qat and self.observer.lo is not None:
            return self._qat_forward(x)
        if self.calibrating or (self.training and self.qat):
            v = input_transform(x.detach(), self.tile, (self.padding[0], self.padding[1]))
            self.observer.observe(self._v_rows(v))
        y = F.conv2d(x, self.weight, self.bias, padding=self.padding)
        return torch.relu(y) if self.relu else y

    def extra_repr(self) -> str:
        k, c = self.weight.shape[:2]
        return (f"{c}, {k}, F({self.tile},3), padding={self.padding}, v={self.v_granularity}, "
                f"qat={self.qat}, relu={self.relu}, frozen={self.frozen}")


def replace_convs(model: nn.Module, tile: int = 2, **options: object) -> dict[str, str]:
    """Swap every eligible Conv2d of `model` (in place) for a WinogradConv2d; a conv directly
    followed by nn.ReLU in an nn.Sequential takes the ReLU in (fused into the output transform).
    Returns {name: reason} of the convs left alone."""
    skipped: dict[str, str] = {}
    for parent_name, parent in list(model.named_modules()):
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if not isinstance(child, nn.Conv2d):
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            if (why := unsupported_reason(child)) is not None:
                skipped[full] = why
                continue
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            fuse = isinstance(parent, nn.Sequential) and isinstance(nxt, nn.ReLU)
            setattr(parent, name, WinogradConv2d(child, tile, relu=fuse, **options))
            if fuse:
                setattr(parent, children[i + 1][0], nn.Identity())
    return skipped


def winograd_layers(model: nn.Module) -> list[WinogradConv2d]:
    return [m for m in model.modules() if isinstance(m, WinogradConv2d)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, limit: int = 16) -> None:
    """Run up to `limit` batches (tensors or (x, y) pairs) in eval mode, observing V."""
    layers = winograd_layers(model)
    was_training = model.training
    model.eval()
    for m in layers:
        m.calibrating = True
    seen = 0
    for b in itertools.islice(batches, limit):
        model(_inputs(b))
        seen += 1
    for m in layers:
        m.calibrating = False
    model.train(was_training)
    if not seen:
        raise ValueError("calibrate needs at least one batch")


def freeze(model: nn.Module) -> None:
    """Quantize every WinogradConv2d of `model` with its calibrated scales."""
    for m in winograd_layers(model):
        m.freeze()


def quantize_winograd(
    model: nn.Module, batches: Iterable, tile: int = 2, *, v_granularity: VGranularity = "position",
    observer: str = "minmax", calibration_batches: int = 16, fold_bn: bool = False,
) -> tuple[nn.Module, dict[str, str]]:
    """(an int8-Winograd copy of `model` in eval mode, {conv name: why it was not converted}):
    swap the 3x3 stride-1 convs, calibrate V on `batches`, quantize U, freeze. `fold_bn` first
    folds each BatchNorm into the conv before it (FuPruner's `graph.fuse`; the copy is then a
    traced GraphModule), so it runs inside the Winograd weights and bias."""
    if fold_bn:
        from ..graph import fuse  # imported here: graph imports this package

        out = fuse(model.eval(), bn=True, pad=False, affine=False, identity=False).module.eval()
    else:
        out = copy.deepcopy(model).eval()
    skipped = replace_convs(out, tile, v_granularity=v_granularity, observer=observer)
    if not winograd_layers(out):
        raise ValueError(f"no conv of the model can run as Winograd F({tile},3): {skipped}")
    calibrate(out, batches, calibration_batches)
    freeze(out)
    return out.eval(), skipped


def prepare_winograd_qat(
    model: nn.Module, batches: Iterable, tile: int = 4, *,
    v_granularity: VGranularity = "position", observer: str = "minmax",
    calibration_batches: int = 16,
) -> tuple[nn.Module, dict[str, str]]:
    """(a copy of `model` whose eligible convs fake-quantize U and V in the Winograd domain while
    in train mode, calibrated on `batches`; the skipped convs with reasons). Fine-tune it (its
    V observers keep watching: minmax becomes a moving average), then `freeze(model)` and
    `model.eval()` for int8."""
    out = copy.deepcopy(model)
    skipped = replace_convs(out, tile, v_granularity=v_granularity, observer=observer, qat=True)
    if not winograd_layers(out):
        raise ValueError(f"no conv of the model can run as Winograd F({tile},3): {skipped}")
    calibrate(out, batches, calibration_batches)
    return out, skipped
