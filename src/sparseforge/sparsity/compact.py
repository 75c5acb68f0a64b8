"""A compact storage format for sparse weights: a packed bit map of the nonzeros plus the
nonzero values, used where it is smaller than the dense tensor. Lossless; tensors only, so it
loads with `weights_only=True`."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_SEP = "::"


def _compact_bytes(t: Tensor) -> int:
    return int(torch.count_nonzero(t)) * t.element_size() + (t.numel() + 7) // 8


def to_compact(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each floating tensor that is smaller as bitmap + values is stored as three entries
    (`name::bitmap`, `name::values`, `name::shape`); everything else is kept as is."""
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        t = t.detach().cpu()
        if t.is_floating_point() and t.numel() > 0 and _compact_bytes(t) < t.numel() * t.element_size():
            flat = t.reshape(-1)
            nz = flat != 0
            out[name + _SEP + "bitmap"] = torch.from_numpy(np.packbits(nz.numpy()))
            out[name + _SEP + "values"] = flat[nz].clone()
            out[name + _SEP + "shape"] = torch.tensor(t.shape, dtype=torch.int64)
        else:
            out[name] = t.clone()
    return out


def from_compact(compact: dict[str, Tensor]) -> dict[str, Tensor]:
    """Invert `to_compact` exactly."""
    out: dict[str, Tensor] = {}
    for key, t in compact.items():
        if _SEP not in key:
            out[key] = t
            continue
        name, part = key.rsplit(_SEP, 1)
        if part != "bitmap":
            continue
        shape = compact[name + _SEP + "shape"].tolist()
        values = compact[name + _SEP + "values"]
        numel = int(np.prod(shape)) if shape else 1
        nz = torch.from_numpy(np.unpackbits(t.numpy(), count=numel).astype(bool))
        flat = torch.zeros(numel, dtype=values.dtype)
        flat[nz] = values
        out[name] = flat.reshape(shape)
    return out


def sparse_memory_bytes(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *, compact: bool = True
) -> int:
    """Bytes of the model's parameters plus the optimizer's state for them, with every masked
    weight stored compactly: values of the kept entries plus int32 indices or a bitmap
    (whichever is smaller), and per-weight optimizer state (momentum, Adam moments) for kept
    entries only. Other parameters count densely; buffers and activations are not counted.
    `compact=False` gives the same tensors stored densely, to compare against."""
    from .masks import get_mask, masked_modules

    masks = {}
    for _, module in masked_modules(model):
        masks[id(module.parametrizations.weight.original)] = get_mask(module)
    state = optimizer.state if optimizer is not None else {}
    total = 0
    for param in model.parameters():
        mask = masks.get(id(param))
        per_weight = [param] + [
            v for v in state.get(param, {}).values()
            if isinstance(v, Tensor) and v.shape == param.shape
        ]
        others = [
            v for v in state.get(param, {}).values()
            if isinstance(v, Tensor) and v.shape != param.shape
        ]
        total += sum(v.numel() * v.element_size() for v in others)
        if mask is None or not compact:
            total += sum(t.numel() * t.element_size() for t in per_weight)
            continue
        kept = int(mask.sum())
        total += min(4 * kept, (mask.numel() + 7) // 8)  # where the kept entries are
        total += sum(kept * t.element_size() for t in per_weight)
    return total
