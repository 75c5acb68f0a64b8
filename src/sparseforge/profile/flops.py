"""FLOPs and parameter counts of a model as it is, masks included: dense FLOPs a dense kernel
does, and effective FLOPs a sparse kernel that skips zero weights would do."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..sparsity.masks import module_type_name
from ._modes import evaluating

COUNTED_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class LayerFlops:
    """One counted layer: weight+bias sizes and FLOPs for the example input (batch included)."""

    name: str
    type: str
    params: int
    nonzeros: int
    dense_flops: int
    effective_flops: int


@dataclass
class FlopReport:
    """Per-layer FLOPs of one forward pass, with model totals."""

    layers: list[LayerFlops]

    @property
    def dense_flops(self) -> int:
        return sum(layer.dense_flops for layer in self.layers)

    @property
    def effective_flops(self) -> int:
        return sum(layer.effective_flops for layer in self.layers)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: totals plus one dict per layer."""
        return {
            "dense_flops": self.dense_flops,
            "effective_flops": self.effective_flops,
            "layers": [asdict(layer) for layer in self.layers],
        }


def _is_attention(module: nn.Module) -> bool:
    """nn.MultiheadAttention and look-alikes (the head-pruned one) that project q/k/v from one
    `in_proj_weight` without calling a module for it."""
    return all(hasattr(module, a) for a in ("in_proj_weight", "out_proj", "num_heads")) and (
        getattr(module, "in_proj_weight", None) is not None)


def _attention_macs(module: nn.Module, inputs: tuple) -> int:
    """q/k/v and output projections plus the two attention products (QK^T, AV)."""
    query, key = inputs[0], inputs[1]
    embed = query.shape[-1]
    inner = module.in_proj_weight.shape[0] // 3
    batch_dim = 0 if getattr(module, "batch_first", False) else 1
    q_tokens, k_tokens = query.numel() // embed, key.numel() // embed
    t, s = query.shape[1 - batch_dim], key.shape[1 - batch_dim]
    products = 2 * query.shape[batch_dim] * t * s * inner
    return (q_tokens + 2 * k_tokens) * embed * inner + q_tokens * inner * embed + products


def _macs(module: nn.Module, output: Tensor, inputs: tuple = ()) -> int:
    """Multiply-accumulates of one call, derived from the output so stride/padding/dilation
    are accounted for; each output element of a conv reads in_channels/groups x kernel inputs."""
    if _is_attention(module):
        return _attention_macs(module, inputs)
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    assert isinstance(module, nn.modules.conv._ConvNd)
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def _weight_stats(module: nn.Module) -> tuple[int, int, int, int]:
    """(weight numel, weight nonzeros, bias numel, bias nonzeros) of the effective tensors."""
    if _is_attention(module):
        tensors = [module.in_proj_weight, module.out_proj.weight]
        biases = [b for b in (module.in_proj_bias, module.out_proj.bias) if b is not None]
        return (sum(t.numel() for t in tensors), sum(int(torch.count_nonzero(t)) for t in tensors),
                sum(b.numel() for b in biases), sum(int(torch.count_nonzero(b)) for b in biases))
    weight = module.weight  # masked tensor when parametrized
    bias = getattr(module, "bias", None)
    b_numel = bias.numel() if bias is not None else 0
    b_nz = int(torch.count_nonzero(bias)) if bias is not None else 0
    return weight.numel(), int(torch.count_nonzero(weight)), b_numel, b_nz


def count_flops(model: nn.Module, example_input: Tensor) -> FlopReport:
    """Count Conv1d/2d/3d, Linear and multi-head attention (projections and the QK^T/AV
    products) FLOPs for one forward of `example_input` (eval, no_grad).
    FLOPs = 2 x MACs; bias adds, activations, softmax and norms are not counted. A module called twice
    counts twice; a module never called is left out."""
    attention = {n for n, m in model.named_modules() if _is_attention(m)}
    counted = [(n, m) for n, m in model.named_modules()
               if (isinstance(m, COUNTED_TYPES) and n.rpartition(".")[0] not in attention)
               or n in attention]
    macs: dict[str, int] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            macs[name] = macs.get(name, 0) + _macs(module, output, inputs)

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in counted]
    try:
        with evaluating(model), torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()

    layers = []
    with torch.no_grad():
        for name, module in counted:
            if name not in macs:
                continue
            w_numel, w_nz, b_numel, b_nz = _weight_stats(module)
            dense = 2 * macs[name]
            effective = round(dense * w_nz / w_numel) if w_numel else 0
            layers.append(
                LayerFlops(
                    name, module_type_name(module), w_numel + b_numel, w_nz + b_nz, dense, effective
                )
            )
    return FlopReport(layers)


def _modules_outside_parametrizations(model: nn.Module) -> Iterator[nn.Module]:
    """Every module once, skipping the `parametrizations` containers (originals and masks)."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield module
        skip = parametrize.is_parametrized(module)
        for child_name, child in module.named_children():
            if not (skip and child_name == "parametrizations"):
                stack.append(child)


def _effective_tensors(module: nn.Module) -> Iterator[tuple[int | None, Tensor]]:
    """(identity for dedup or None, tensor) for a module's own params and parametrized tensors."""
    for param in module.parameters(recurse=False):
        yield id(param), param
    if parametrize.is_parametrized(module):
        for tensor_name in module.parametrizations:
            yield None, getattr(module, tensor_name)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) parameter counts over the tensors the model computes with: a masked
    weight counts as its masked tensor, never as `...original` plus its mask buffer."""
    total = nonzero = 0
    seen: set[int] = set()
    with torch.no_grad():
        for module in _modules_outside_parametrizations(model):
            for key, tensor in _effective_tensors(module):
                if key is not None:
                    if key in seen:
                        continue
                    seen.add(key)
                total += tensor.numel()
                nonzero += int(torch.count_nonzero(tensor))
    return total, nonzero
