"""Quantization attached to layers: a stateless weight fake-quant parametrization (stacks after a
pruning mask, so it quantizes the masked weight and zeros stay zero), an activation fake-quant
forward pre-hook with its observer, and snapping stored weights onto their grid."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..sparsity.masks import Mask
from .config import QuantSpec, TensorQuant
from .grid import fake_quantize, fake_quantize_per_token
from .observers import Observer, make_observer, weight_qparams


def quantizable_layers(model: nn.Module, config: QuantSpec) -> dict[str, nn.Module]:
    """The modules `config.layers` selects (by qualified name); an empty pick is an error."""
    picked = {
        n: m for n, m in model.named_modules()
        if config.layers.matches(n, m) and isinstance(getattr(m, "weight", None), Tensor)
    }
    if not picked:
        raise ValueError(f"the layer selection {config.layers.model_dump()} matched no module "
                         "with a weight; set `layers.types` to the layer classes to quantize")
    return picked


def fake_quantize_weight(weight: Tensor, spec: TensorQuant) -> Tensor:
    """The weight on its grid (observer on the detached weight, straight-through gradient)."""
    scale, zero_point = weight_qparams(weight.detach(), spec)
    axis = 0 if spec.granularity == "per_channel" else None
    return fake_quantize(weight, scale.to(weight.device), zero_point.to(weight.device),
                         spec.bits, spec.symmetric, axis)


class WeightFakeQuant(nn.Module):
    """Parametrization: `module.weight` reads as its fake-quantized value while `enabled`.
    Holds no tensors, so state dicts keep the keys they had without it."""

    def __init__(self, spec: TensorQuant) -> None:
        super().__init__()
        self.spec = spec
        self.enabled = True

    def forward(self, weight: Tensor) -> Tensor:
        return fake_quantize_weight(weight, self.spec) if self.enabled else weight


def weight_fake_quant(module: nn.Module) -> WeightFakeQuant | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, WeightFakeQuant)), None)


def add_weight_fake_quant(module: nn.Module, spec: TensorQuant) -> WeightFakeQuant:
    """Register (or return the existing) weight fake quantization, last in the chain."""
    existing = weight_fake_quant(module)
    if existing is not None:
        return existing
    fq = WeightFakeQuant(spec)
    parametrize.register_parametrization(module, "weight", fq)
    return fq


def remove_weight_fake_quant(module: nn.Module) -> None:
    """Write the quantized weight into the stored parameter and drop the parametrization:
    the weight stays on its grid, and a mask (if any) stays in place."""
    fq = weight_fake_quant(module)
    if fq is None:
        return
    with torch.no_grad():
        fq.enabled = True
        snapped = module.weight.detach().clone()
        plist = module.parametrizations.weight
        plist.original.copy_(snapped)
    if len(plist) == 1:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    else:
        del plist[next(i for i, p in enumerate(plist) if p is fq)]


@torch.no_grad()
def quantize_weights_(layers: dict[str, nn.Module], spec: TensorQuant) -> None:
    """Snap each layer's stored weight onto its grid, in place. A masked weight is quantized
    as masked (the scale ignores pruned entries) and its zeros stay exactly zero."""
    for module in layers.values():
        effective = module.weight.detach()  # original * mask when masked
        snapped = fake_quantize_weight(effective, spec)
        if parametrize.is_parametrized(module, "weight"):
            if not all(isinstance(p, Mask) for p in module.parametrizations.weight):
                raise ValueError(f"{type(module).__name__} has a weight parametrization other "
                                 "than a pruning mask; quantize the plain or masked model")
            module.parametrizations.weight.original.copy_(snapped)
        else:
            module.weight.copy_(snapped)


class ActivationFakeQuant:
    """Forward pre-hook fake-quantizing a layer's input. `calibrating`: observe every call;
    `observe_in_training`: observe while the layer is in train mode (QAT); `quantizing`:
    apply the grid. Per-token specs quantize dynamically and observe nothing."""

    def __init__(self, spec: TensorQuant, channel_dim: int) -> None:
        self.spec = spec
        self.channel_dim = channel_dim
        axis = channel_dim if spec.granularity == "per_channel" else None
        self.observer: Observer = make_observer(spec, axis)
        self.calibrating = False
        self.observe_in_training = False
        self.quantizing = False
        self._qparams: tuple[Tensor, Tensor] | None = None
        self.handle = None

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        if self.spec.granularity == "per_token":
            if not self.quantizing:
                return None
            return (fake_quantize_per_token(x, self.spec.bits, self.spec.symmetric,
                                            self.channel_dim), *args[1:])
        if self.calibrating or (self.observe_in_training and module.training):
            self.observer.observe(x)
            self._qparams = None
        if not self.quantizing:
            return None
        if self._qparams is None:
            self._qparams = self.observer.qparams()
        scale, zp = (t.to(x.device) for t in self._qparams)
        axis = self.channel_dim if self.spec.granularity == "per_channel" else None
        return (fake_quantize(x, scale, zp, self.spec.bits, self.spec.symmetric, axis), *args[1:])


_ATTR = "_sparseforge_act_quant"


def add_activation_fake_quant(module: nn.Module, spec: TensorQuant) -> ActivationFakeQuant:
    """Attach an input fake quantizer to a conv (channels at dim 1) or linear (last dim)."""
    channel_dim = 1 if isinstance(module, nn.modules.conv._ConvNd) else -1
    quantizer = ActivationFakeQuant(spec, channel_dim)
    quantizer.handle = module.register_forward_pre_hook(quantizer)
    setattr(module, _ATTR, quantizer)
    return quantizer


def activation_quantizers(model: nn.Module) -> Iterator[tuple[str, ActivationFakeQuant]]:
    for name, module in model.named_modules():
        quantizer = getattr(module, _ATTR, None)
        if quantizer is not None:
            yield name, quantizer


def remove_activation_fake_quant(model: nn.Module) -> None:
    """Detach every activation quantizer from `model`."""
    for name, quantizer in list(activation_quantizers(model)):
        module = model.get_submodule(name)
        module._forward_pre_hooks.pop(quantizer.handle.id, None)
        delattr(module, _ATTR)
