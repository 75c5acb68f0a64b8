"""Shared pieces of the storage formats: the GEMM view, kept-entry masks, index dtypes and the
tensor-only state encoding that loads with `torch.load(weights_only=True)`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor


def gemm_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of a weight's GEMM view, as `schemes.as_matrix` reshapes it."""
    if len(shape) > 1:
        return shape[0], math.prod(shape[1:])
    return 1, math.prod(shape)


def kept_entries(weight: Tensor, mask: Tensor | None) -> Tensor:
    """Bool tensor of the entries a format must store: the mask if given (so kept weights that
    are exactly 0 keep their place), else the nonzeros. Lossless: nonzeros outside the mask fail."""
    if mask is None:
        return weight != 0
    if mask.shape != weight.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} differs from weight shape {tuple(weight.shape)}"
        )
    mask = mask.to(device=weight.device, dtype=torch.bool)
    outside = int(torch.count_nonzero(weight.masked_fill(mask, 0)))
    if outside:
        raise ValueError(
            f"the weight has {outside} nonzeros where the mask is False; store the masked weight "
            "(weight * mask) or pass the mask that produced it"
        )
    return mask


def index_dtype(bound: int) -> torch.dtype:
    """int32 for indices and offsets up to `bound` when they fit, else int64 (CSR/BSR style)."""
    return torch.int32 if bound < 2**31 else torch.int64


def small_index_dtype(bound: int) -> torch.dtype:
    """Narrowest dtype holding positions 0..bound-1 inside a group or block: uint8 up to 256."""
    if bound <= 256:
        return torch.uint8
    return torch.int16 if bound <= 2**15 else torch.int32


def shape_tensor(shape: Iterable[int]) -> Tensor:
    return torch.tensor(list(shape), dtype=torch.int64)


def tensor_bytes(tensors: Iterable[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def read_state(
    state: Mapping[str, Tensor], prefix: str, fields: Iterable[str], kind: str
) -> dict[str, Tensor]:
    """The entries `prefix + field` of a state dict, with an error naming what is missing."""
    missing = [prefix + f for f in fields if prefix + f not in state]
    if missing:
        raise KeyError(
            f"state has no {', '.join(repr(m) for m in missing)}; was it written by "
            f"{kind}.to_state(prefix={prefix!r})?"
        )
    return {f: state[prefix + f] for f in fields}


def as_ints(t: Tensor) -> tuple[int, ...]:
    return tuple(int(v) for v in t.reshape(-1).tolist())


class TensorState:
    """Mixin for the format dataclasses: the GEMM shape (and block grid) of the stored weight,
    and their fields as a tensor-only state (ints and shapes as int64 tensors, a uint8 `format`
    tag) and back. FIELDS lists the stored dataclass fields."""

    KIND: ClassVar[int]
    FIELDS: ClassVar[tuple[str, ...]]
    shape: tuple[int, ...]

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return gemm_shape(self.shape)

    @property
    def grid(self) -> tuple[int, int]:
        """(block rows, block columns) of the padded matrix (blocked formats)."""
        (rows, cols), (r, c) = self.matrix_shape, self.block  # type: ignore[attr-defined]
        return -(-rows // r), -(-cols // c)

    def to_state(self, prefix: str = "") -> dict[str, Tensor]:
        """Tensors only, keys `prefix + field`; end `prefix` with a separator such as '::'."""
        out = {prefix + "format": torch.tensor([self.KIND], dtype=torch.uint8)}
        for name in self.FIELDS:
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                value = shape_tensor(value if isinstance(value, tuple) else (value,))
            out[prefix + name] = value
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor], prefix: str = "") -> Any:
        stored = read_state(state, prefix, cls.FIELDS, cls.__name__)
        kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

        def decode(name: str, t: Tensor) -> Any:
            if kinds[name].startswith("tuple"):
                return as_ints(t)
            return as_ints(t)[0] if kinds[name] == "int" else t

        return cls(**{name: decode(name, t) for name, t in stored.items()})
