"""Turn a PruningSpec and a target sparsity into masks on a model: select layers, score them,
share the target between layers (layer-wise or by a global ranking), shape and apply masks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .criteria import CRITERIA
from .masks import apply_mask, module_type_name
from .schemes import SCHEMES
from .spec import PruningSpec, name_matches, scheme_params


def select_layers(model: nn.Module, spec: PruningSpec) -> dict[str, nn.Module]:
    """The modules `spec.layers` picks, by qualified name; an empty pick is an error."""
    picked = {
        n: m for n, m in model.named_modules() if spec.layers.matches(n, m) and hasattr(m, "weight")
    }
    if not picked:
        candidates = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        raise ValueError(
            f"the layer selection {spec.layers.model_dump()} matched no module; "
            f"Conv2d/Linear modules in this model: {', '.join(candidates[:20]) or 'none'}"
        )
    return picked


def _fixed_targets(names: list[str], spec: PruningSpec) -> dict[str, float]:
    fixed: dict[str, float] = {}
    for override in spec.overrides:
        for n in names:
            if any(name_matches(n, p) for p in override.layers):
                fixed[n] = override.sparsity
    return fixed


def layer_targets(scores: dict[str, Tensor], target: float, spec: PruningSpec) -> dict[str, float]:
    """Per-layer sparsity for a model-wide target. Layer-wise: every layer gets the target.
    Global: one threshold over all layers' scores (global magnitude pruning for unstructured;
    for group schemes it sets each layer's rate, then the scheme shapes that layer's mask)."""
    fixed = _fixed_targets(list(scores), spec)
    free = [n for n in scores if n not in fixed]
    targets = dict(fixed)
    if spec.allocation == "layerwise" or not free or target <= 0:
        targets.update({n: min(target, spec.max_layer_sparsity) for n in free})
        return targets
    pooled = torch.cat([scores[n].reshape(-1).float().cpu() for n in free])
    k = int(round(target * pooled.numel()))
    if k == 0:
        targets.update({n: 0.0 for n in free})
        return targets
    threshold = torch.kthvalue(pooled, k).values
    for n in free:
        below = (scores[n] <= threshold).sum().item() / scores[n].numel()
        targets[n] = min(below, spec.max_layer_sparsity)
    return targets


def masks_for(
    tensors: dict[str, Tensor],
    spec: PruningSpec,
    target: float,
    grad_stats: dict[str, Tensor | None] | None = None,
    generator: torch.Generator | None = None,
    *,
    scheme_args: dict | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Tensor]:
    """Masks (True = kept) for named tensors at the model-wide `target` sparsity: score with
    the criterion, share the target between tensors, shape each mask with the scheme.
    `scheme_args` overrides the scheme's parameters; `labels` name tensors in errors."""
    criterion = CRITERIA.get(spec.criterion)
    grad_stats = grad_stats or {}
    scores = {n: criterion.score(t, grad_stats.get(n), generator) for n, t in tensors.items()}
    targets = layer_targets(scores, target, spec)
    scheme = SCHEMES.get(spec.scheme.name)
    params = scheme_params(spec.scheme) if scheme_args is None else scheme_args
    masks = {}
    for n, s in scores.items():
        try:
            masks[n] = scheme(s, targets[n], **params)
        except ValueError as err:
            raise ValueError(f"module {(labels or {}).get(n, repr(n))}: {err}") from None
    return masks


def compute_masks(
    layers: dict[str, nn.Module],
    spec: PruningSpec,
    target: float,
    grad_stats: dict[str, Tensor | None] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Masks (True = kept) for each layer's weight at the model-wide `target` sparsity."""
    return masks_for(
        {n: m.weight for n, m in layers.items()}, spec, target, grad_stats, generator,
        labels={n: f"'{n}' ({module_type_name(m)})" for n, m in layers.items()},
    )


def prune(
    model: nn.Module,
    scheme: str | dict = "unstructured",
    sparsity: float = 0.5,
    *,
    criterion: str = "magnitude",
    layers: str | list[str] | dict | None = None,
    allocation: str = "layerwise",
    **spec_fields,
) -> dict[str, float]:
    """One-shot pruning: mask `model` in place to `sparsity` with `scheme` ('unstructured',
    '2:4', 'channel', {'name': 'block', 'block': [4, 4]}, ...). Returns per-layer sparsity."""
    spec_args = dict(scheme=scheme, criterion=criterion, allocation=allocation, **spec_fields)
    if layers is not None:
        spec_args["layers"] = layers
    spec = PruningSpec.model_validate(spec_args)
    picked = select_layers(model, spec)
    masks = compute_masks(picked, spec, sparsity)
    for n, mask in masks.items():
        apply_mask(picked[n], mask)
    return {n: 1.0 - masks[n].float().mean().item() for n in masks}
