"""What each layer's weight precision costs and breaks, one layer at a time: rounding a weight
to a bit width, its bytes at that width, the calibration-loss increase when only that layer is
rounded, and HAWQ's second criterion (Hutchinson Hessian trace / params x ||Q(W) - W||^2)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TensorQuant
from .layers import fake_quantize_weight

Batches = Sequence[tuple[Tensor, Tensor]]


def round_weight(weight: Tensor, bits: int, spec: TensorQuant) -> Tensor:
    """`weight` at `bits`: 32 unchanged, 16 rounded through bfloat16, 4 and 8 on the grid of
    `spec` (its granularity and observer) at that width. Zeros stay zero at every width."""
    if bits == 32:
        return weight
    if bits == 16:
        return weight.to(torch.bfloat16).to(weight.dtype)
    if bits not in (4, 8):
        raise ValueError(f"bit width {bits} is not supported: choose from 4, 8, 16, 32")
    return fake_quantize_weight(weight, spec.model_copy(update={"bits": bits}))


def weight_bytes(weight: Tensor, bits: int, spec: TensorQuant) -> float:
    """Storage of `weight` at `bits`: the values, plus one fp32 scale (and an int32 zero
    point when asymmetric) per output channel or per tensor for the integer widths."""
    values = weight.numel() * bits / 8
    if bits >= 16:
        return values
    groups = weight.shape[0] if spec.granularity == "per_channel" else 1
    return values + groups * (4 if spec.symmetric else 8)


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Batches) -> float:
    """Mean cross-entropy of `model` over (x, y) batches (one forward each)."""
    total, count = 0.0, 0
    for x, y in batches:
        total += F.cross_entropy(model(x), y, reduction="sum").item()
        count += len(y)
    if count == 0:
        raise ValueError("no calibration batches: give at least one (x, y) batch")
    return total / count


@torch.no_grad()
def loss_sensitivity(
    model: nn.Module, layers: Mapping[str, nn.Module], batches: Batches, bits: Iterable[int],
    spec: TensorQuant,
) -> dict[str, dict[int, float]]:
    """{layer: {bits: loss increase}}: mean calibration loss with only that layer's (plain,
    unparametrized) weight rounded to `bits`, minus the unrounded loss. `model` in eval mode;
    every weight is restored afterwards."""
    widths = list(bits)
    base = mean_loss(model, batches)
    out: dict[str, dict[int, float]] = {}
    for name, module in layers.items():
        original = module.weight.detach().clone()
        out[name] = {}
        try:
            for b in widths:
                module.weight.copy_(round_weight(original, b, spec))
                out[name][b] = mean_loss(model, batches) - base
        finally:
            module.weight.copy_(original)
    return out


def hutchinson_trace(
    loss_fn: Callable[[], Tensor], params: Sequence[Tensor], samples: int,
    generator: torch.Generator,
) -> list[float]:
    """Per-parameter Hessian trace estimates E[v^T H v] with Rademacher probes v, from one
    gradient graph of `loss_fn()` and `samples` Hessian-vector products."""
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    traces = [0.0] * len(params)
    for _ in range(samples):
        probes = [torch.randint(0, 2, p.shape, generator=generator).to(p) * 2 - 1 for p in params]
        hvps = torch.autograd.grad(grads, params, grad_outputs=probes, retain_graph=True)
        for i, (hv, v) in enumerate(zip(hvps, probes, strict=True)):
            traces[i] += (hv * v).sum().item() / samples
    return traces


def hessian_sensitivity(
    model: nn.Module, layers: Mapping[str, nn.Module], batches: Batches, bits: Iterable[int],
    spec: TensorQuant, *, samples: int = 8, seed: int = 0,
) -> dict[str, dict[int, float]]:
    """{layer: {bits: trace(H) / params x ||round(W, bits) - W||^2}} (HAWQ-V2), the trace
    averaged over the calibration batches with `samples` probes each. `model` in eval mode."""
    names = list(layers)
    params = [layers[n].weight for n in names]
    flags = [p.requires_grad for p in params]
    generator = torch.Generator().manual_seed(seed)
    totals = [0.0] * len(params)
    try:
        for p in params:
            p.requires_grad_(True)
        for x, y in batches:
            traces = hutchinson_trace(lambda x=x, y=y: F.cross_entropy(model(x), y), params,
                                      samples, generator)
            totals = [t + s / len(batches) for t, s in zip(totals, traces, strict=True)]
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    out: dict[str, dict[int, float]] = {}
    for name, param, trace in zip(names, params, totals, strict=True):
        w = param.detach()
        out[name] = {b: trace / w.numel() * (round_weight(w, b, spec) - w).pow(2).sum().item()
                     for b in bits}
    return out
