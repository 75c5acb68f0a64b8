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
