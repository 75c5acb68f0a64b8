"""Semi-structured activation sparsity for convolutions (Grimaldi et al. 2023): the Conv2d that
trains with a static tile mask on its im2col/GEMM layout and runs the skipping runtime in eval
mode, and the helpers that wrap a model's convolutions. Geometry and runtime: `im2col_tiles.py`."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .im2col_tiles import (
    DEFAULT_TILE,
    Geometry,
    SkipPlan,
    build_plan,
    check_tile,
    choose_run,
    choose_tiles,
    conv_out_size,
    expand_tiles,
    feature_map_mask,
    semi_structured_conv2d,
    tile_grid,
    tile_mean,
    tile_sizes,
)


class SemiStructuredConv2d(nn.Conv2d):
    """A Conv2d with a static tile mask on its GEMM layout. Training: the mask multiplies the
    input (channel) or output (spatial) feature map, and the per-element mean |activation| the
    magnitude criterion ranks tiles by is tracked (EMA). Eval: `semi_structured_conv2d` skips
    the masked tiles. `set_ratio` re-chooses the mask; `frozen` stops that (deploy)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, *, geometry: Geometry = "channel",
                 tile: tuple[int, ...] | None = None,
                 criterion: Literal["magnitude", "random"] = "magnitude", seed: int = 0,
                 momentum: float = 0.9, contiguous: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         bias=bias)
        if isinstance(self.padding, str):
            raise ValueError(f"SemiStructuredConv2d needs numeric padding, got {padding!r}")
        self.geometry = geometry
        self.tile = check_tile(geometry, tile or DEFAULT_TILE[geometry])
        if criterion not in ("magnitude", "random"):
            raise ValueError(f"unknown criterion {criterion!r}; choose 'magnitude' or 'random'")
        if contiguous and geometry != "channel":
            raise ValueError("contiguous=True (one run of kept channel tiles) needs the channel "
                             "geometry")
        self.criterion, self.seed, self.momentum = criterion, seed, momentum
        self.contiguous = contiguous
        self.ratio, self.frozen, self._pending, self._observed = 0.0, False, False, 0
        self._mask_gen = 0  # bumped whenever tile_keep changes: invalidates the skip plan
        if geometry == "channel":
            self.register_buffer("tile_keep", torch.ones(tile_grid(geometry, self.tile,
                                 in_channels, (0, 0)), dtype=torch.bool))
            self.register_buffer("act_score", torch.zeros(in_channels), persistent=False)
        else:  # sized on the first forward (or by load_state_dict)
            self.register_buffer("tile_keep", torch.ones(0, 0, dtype=torch.bool))
            self.register_buffer("out_hw", torch.zeros(2, dtype=torch.long))
            self.register_buffer("act_score", torch.zeros(0, 0), persistent=False)
        self._plan: tuple[tuple, SkipPlan] | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs) -> SemiStructuredConv2d:
        """Wrap `conv` sharing its parameters (an optimizer holding them keeps working)."""
        if not _supported(conv):
            raise ValueError(
                f"semi-structured activation sparsity needs groups=1, numeric zero padding and "
                f"no weight parametrization; this Conv2d has groups={conv.groups}, padding="
                f"{conv.padding!r} ({conv.padding_mode}): exclude it from the layers"
            )
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  conv.padding, conv.dilation, conv.bias is not None, **kwargs)
        new.weight, new.bias = conv.weight, conv.bias
        return new.to(conv.weight.device)

    # -- masks
    @property
    def size(self) -> tuple[int, ...]:
        """(C,) or (OH, OW): what the element mask covers; (0, 0) before a spatial forward."""
        return (self.in_channels,) if self.geometry == "channel" else tuple(self.out_hw.tolist())

    def keep_mask(self) -> Tensor:
        """Element mask: (C,) kept input channels or (OH, OW) kept output positions."""
        return expand_tiles(self.tile_keep, self.tile, self.size)

    @property
    def masked_ratio(self) -> float:
        """Fraction of the im2col matrix that is masked (edge tiles counted by their size)."""
        keep = self.keep_mask()
        return 1.0 - keep.float().mean().item() if keep.numel() else 0.0

    def set_ratio(self, ratio: float) -> None:
        """Mask the `ratio` of tiles with the lowest scores (now, or at the next training
        forward if the feature-map size or the activation scores are not known yet)."""
        if self.frozen:
            raise RuntimeError("this layer's mask is frozen (deployed); it no longer changes")
        self.ratio, self._pending = float(ratio), True
        if self.tile_keep.numel() and (self.criterion == "random" or self._observed):
            self._choose()

    def tile_scores(self) -> Tensor:
        """Per-tile score, lowest masked first: a fixed random ranking (seeded), or the mean
        over the tile of EMA |activation| (times the weight column norm, channel geometry)."""
        grid = tuple(self.tile_keep.shape)
        if self.criterion == "random":
            g = torch.Generator().manual_seed(self.seed)
            return torch.rand(grid, generator=g).to(self.tile_keep.device)
        scores = self.act_score
        if self.geometry == "channel":
            scores = scores * self.weight.detach().pow(2).sum(dim=(0, 2, 3)).sqrt()  # (C,)
        return tile_mean(scores, self.tile, grid)

    def _choose(self) -> None:
        with torch.no_grad():
            sizes = tile_sizes(self.size, self.tile, tuple(self.tile_keep.shape))
            choose = choose_run if self.contiguous else choose_tiles
            self.tile_keep.copy_(choose(self.tile_scores(), self.ratio, sizes))
        self._pending = False
        self._mask_gen += 1

    def _size_spatial(self, out_size: tuple[int, int]) -> None:
        if tuple(self.out_hw.tolist()) == out_size:
            return
        if self.out_hw.any():
            raise ValueError(f"feature map changed size: the spatial mask was made for "
                             f"{tuple(self.out_hw.tolist())} outputs, this input gives {out_size}")
        dev = self.weight.device
        with torch.inference_mode(False):  # first call under inference_mode: normal buffers
            self.out_hw = torch.tensor(out_size, device=self.out_hw.device)
            self.tile_keep = torch.ones(tile_grid("spatial", self.tile, 0, out_size),
                                        dtype=torch.bool, device=dev)
            self.act_score = torch.zeros(out_size, device=dev)
        self._mask_gen += 1

    def _observe(self, act: Tensor) -> None:
        """EMA of mean |activation| per input channel (channel) or output position (spatial)."""
        if self.criterion != "magnitude":
            return
        with torch.no_grad():
            dims = (0, 2, 3) if self.geometry == "channel" else (0, 1)
            now = act.detach().abs().mean(dim=dims).float()
            keep = 0.0 if self._observed == 0 else self.momentum
            self.act_score.mul_(keep).add_(now, alpha=1.0 - keep)
            self._observed += 1

    # -- forward
    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, O, OH, OW)
        if self.geometry == "spatial":
            self._size_spatial(conv_out_size(tuple(x.shape[-2:]), self))
        if not self.training:
            return semi_structured_conv2d(x, self, self._skip_plan(x))
        if self.geometry == "channel":
            if not self.frozen:
                self._observe(x)
            if self._pending:
                self._choose()
            mask = feature_map_mask("channel", self.keep_mask()).to(x.dtype)
            return self._conv_forward(x * mask, self.weight, self.bias)
        y = self._conv_forward(x, self.weight, self.bias)
        if not self.frozen:
            self._observe(y)
        if self._pending:
            self._choose()
        return y * feature_map_mask("spatial", self.keep_mask()).to(y.dtype)

    def _skip_plan(self, x: Tensor) -> SkipPlan:
        key = (tuple(x.shape[-2:]), _version(self.weight), id(self.weight), self._mask_gen,
               x.device, x.dtype)
        if self._plan is None or self._plan[0] != key:
            plan = build_plan(self, self.geometry, self.keep_mask(), tuple(x.shape[-2:]))
            self._plan = (key, plan)
        return self._plan[1]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        saved = state_dict.get(prefix + "tile_keep")
        if saved is not None and saved.shape != self.tile_keep.shape and self.geometry == "spatial":
            self.tile_keep = torch.ones_like(saved, device=self.tile_keep.device)
            self.act_score = torch.zeros(tuple(state_dict[prefix + "out_hw"].tolist()),
                                         device=self.tile_keep.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._mask_gen += 1

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, geometry={self.geometry}, tile={self.tile}, "
                f"ratio={self.ratio:g}")


def _version(t: Tensor) -> int:
    """In-place version counter (inference tensors have none and cannot change later)."""
    try:
        return t._version
    except RuntimeError:
        return -1


# --- model-level ------------------------------------------------------------------------------


def wrappable_convs(model: nn.Module) -> list[str]:
    """Every Conv2d SemiStructuredConv2d can replace: groups=1, numeric zero padding, no
    weight parametrization."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and _supported(m)]


def default_layers(model: nn.Module) -> list[str]:
    """Every wrappable Conv2d except the model's first conv (it sees the image itself)."""
    first = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    return [n for n in wrappable_convs(model) if n != first]


def _supported(conv: nn.Conv2d) -> bool:
    return (conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and not hasattr(conv, "parametrizations"))


def wrap_convs(model: nn.Module, layers: list[str], **kwargs) -> dict[str, SemiStructuredConv2d]:
    """Replace the named Conv2d modules in place by SemiStructuredConv2d (same parameters);
    each layer's random-criterion seed is `seed` + its index. Returns {name: wrapped}."""
    base_seed = kwargs.pop("seed", 0)
    wrapped = {}
    for i, name in enumerate(layers):
        conv = model.get_submodule(name)
        if isinstance(conv, SemiStructuredConv2d):
            wrapped[name] = conv
            continue
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"module '{name}' is a {type(conv).__name__}, not a Conv2d")
        new = SemiStructuredConv2d.from_conv(conv, seed=base_seed + i, **kwargs)
        new.train(conv.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
        wrapped[name] = new
    return wrapped


def freeze(model: nn.Module) -> dict[str, float]:
    """Fix every SemiStructuredConv2d's mask (deploy): eval mode then always runs the skipping
    runtime on these masks. Returns {layer: masked ratio of its im2col matrix}."""
    ratios = {}
    for name, m in model.named_modules():
        if isinstance(m, SemiStructuredConv2d):
            if m._pending and m.tile_keep.numel():
                m._choose()
            m.frozen = True
            ratios[name] = m.masked_ratio
    return ratios
