"""Masks as parametrizations: `module.weight` reads as `original * mask`, so optimizers, state
dicts and DDP see ordinary parameters and masked weights are exactly zero after every step."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


class Mask(nn.Module):
    """Parametrization multiplying a tensor by a fixed bool mask (True = kept)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask.to(weight.dtype)


def module_type_name(module: nn.Module) -> str:
    """The class name users know (`Conv2d`), seeing through the subclass parametrize creates
    for a masked module (`ParametrizedConv2d`)."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls.__name__


def _mask_of(module: nn.Module, name: str) -> Mask | None:
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, Mask):
            return p
    return None


def apply_mask(module: nn.Module, mask: Tensor, name: str = "weight") -> None:
    """Mask `module.<name>` (registering the parametrization on first use, updating it in place
    after) and zero the masked entries of the stored parameter, so regrown weights start at 0."""
    target = getattr(module, name)
    if mask.shape != target.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != {name} shape {tuple(target.shape)}")
    existing = _mask_of(module, name)
    if existing is None:
        parametrize.register_parametrization(module, name, Mask(mask.to(target.device)))
    else:
        existing.mask.copy_(mask)
    with torch.no_grad():
        module.parametrizations[name].original.mul_(mask.to(target.dtype))


def get_mask(module: nn.Module, name: str = "weight") -> Tensor | None:
    """The bool mask on `module.<name>`, or None if it is not masked."""
    m = _mask_of(module, name)
    return None if m is None else m.mask


def masked_modules(model: nn.Module, name: str = "weight") -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) for every module whose `name` tensor carries a mask."""
    for qname, module in model.named_modules():
        if _mask_of(module, name) is not None:
            yield qname, module


def bake_masks(model: nn.Module) -> nn.Module:
    """Remove every mask parametrization, leaving the masked (zeroed) weights as plain
    parameters: the model then saves and loads like any dense model. Safe on a deepcopy: the
    copy shares its parametrized class with the original, which torch's
    `remove_parametrizations` would edit (deleting `weight` from the original too), so a
    module masked only by us is restored by resetting the instance's class instead."""
    for _, module in list(masked_modules(model)):
        plist = module.parametrizations
        if set(plist) == {"weight"} and len(plist["weight"]) == 1:
            baked = nn.Parameter(module.weight.detach().clone(), plist["weight"].original.requires_grad)
            module.__class__ = module.__class__.__bases__[0]
            del module._modules["parametrizations"]
            module.register_parameter("weight", baked)
        else:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


_MASK_SUFFIX = ".parametrizations.weight.0.mask"


def load_masked_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load a state dict saved from a masked model into a fresh (unmasked or masked) one: masks
    found in `state` are registered first, then everything is loaded strictly."""
    modules = dict(model.named_modules())
    for key, value in state.items():
        if key.endswith(_MASK_SUFFIX):
            qname = key[: -len(_MASK_SUFFIX)]
            if qname not in modules:
                raise KeyError(f"checkpoint has a mask for '{qname}', which the model lacks")
            if get_mask(modules[qname]) is None:
                apply_mask(modules[qname], value)
    model.load_state_dict(state, strict=True)


def masks_state(model: nn.Module) -> dict[str, Tensor]:
    """{module name: mask} for every masked module (copies)."""
    return {n: get_mask(m).clone() for n, m in masked_modules(model)}


def sparsity(t: Tensor) -> float:
    """Fraction of exact zeros."""
    return 1.0 - torch.count_nonzero(t).item() / max(1, t.numel())


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Sparsity of the effective weight of every masked module."""
    return {n: sparsity(m.weight) for n, m in masked_modules(model)}


def global_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all masked weights together (0 when nothing is masked)."""
    zeros = total = 0
    for _, m in masked_modules(model):
        w = m.weight
        total += w.numel()
        zeros += w.numel() - torch.count_nonzero(w).item()
    return zeros / total if total else 0.0
