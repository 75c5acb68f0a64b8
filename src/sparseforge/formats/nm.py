"""N:M storage: in every group of m consecutive weights along input channels (the `nm`
scheme's (out, kh, kw, in) order) the n kept values plus their positions in the group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..sparsity.schemes import nm_layout, nm_unlayout
from .base import TensorState, kept_entries, small_index_dtype, tensor_bytes


def _check_nm(shape: tuple[int, ...], n: int, m: int) -> None:
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < n < m, got {n}:{m}")
    in_features = shape[1] if len(shape) > 1 else (shape[0] if shape else 1)
    if in_features % m:
        raise ValueError(
            f"the weight has {in_features} input channels, not divisible by the N:M group size "
            f"{m}; store it in another format (CSR) or pick an m that divides it"
        )


def _group_name(shape: tuple[int, ...], group: int, m: int) -> str:
    """Where group `group` of a row lies in the weight: its input channels (and kernel position)."""
    if len(shape) <= 2:
        return f"input columns {group * m}..{group * m + m - 1}"
    per_pos = shape[1] // m
    pos, cg = divmod(group, per_pos)
    kernel_pos = torch.unravel_index(torch.tensor(pos), shape[2:])
    where = tuple(int(p) for p in kernel_pos)
    return f"input channels {cg * m}..{cg * m + m - 1} at kernel position {where}"


@dataclass(frozen=True, eq=False)
class NM(TensorState):
    """Layout: the weight in (out, kh, kw, in) order, each row cut into G = in*kh*kw/m groups
    of m. `values[o, g*n + j]` is the j-th stored entry of group g of row o, `indices[o, g*n + j]`
    its position 0..m-1 in the group, ascending within a group. A group with fewer than n kept
    entries is padded with its lowest free positions holding 0."""

    shape: tuple[int, ...]  # the weight's own shape
    n: int
    m: int
    values: Tensor  # (out, G * n), the weight's dtype
    indices: Tensor  # (out, G * n), uint8 (int16 for m > 256)

    KIND: ClassVar[int] = 3
    FIELDS: ClassVar[tuple[str, ...]] = ("shape", "n", "m", "values", "indices")

    @classmethod
    def from_dense(cls, weight: Tensor, n: int = 2, m: int = 4, mask: Tensor | None = None) -> NM:
        """Pack an n:m sparse weight; an error names the first group holding more than n entries."""
        weight = weight.detach()
        shape = tuple(weight.shape)
        _check_nm(shape, n, m)
        rows = shape[0] if len(shape) > 1 else 1
        kept = nm_layout(kept_entries(weight, mask)).reshape(rows, -1, m)  # (out, G, m)
        counts = kept.sum(2)  # (out, G)
        bad = (counts > n).nonzero()
        if len(bad):
            o, g = (int(v) for v in bad[0])
            raise ValueError(
                f"the weight is not {n}:{m} sparse: row {o}, group {g} "
                f"({_group_name(shape, g, m)}) holds {int(counts[o, g])} entries, more than {n}; "
                f"prune it with the `nm` scheme (n={n}, m={m}) first, or pass the n and m it was "
                "pruned with"
            )
        pos = torch.arange(m, device=weight.device)  # (m,)
        priority = kept.long() * m + (m - 1 - pos)  # kept first, then the lowest free positions
        idx = priority.topk(n, dim=2).indices.sort(dim=2).values  # (out, G, n)
        vals = nm_layout(weight).reshape(rows, -1, m).gather(2, idx)  # (out, G, n)
        idx = idx.reshape(rows, -1).to(small_index_dtype(m))  # (out, G * n)
        return cls(shape, n, m, vals.reshape(rows, -1), idx)

    def to_dense(self) -> Tensor:
        """The weight in its own shape, zeros at the positions not stored."""
        rows = self.values.shape[0]
        vals = self.values.reshape(rows, -1, self.n)  # (out, G, n)
        idx = self.indices.reshape(rows, -1, self.n).long()  # (out, G, n)
        groups = torch.zeros(rows, vals.shape[1], self.m, dtype=vals.dtype, device=vals.device)
        groups.scatter_(2, idx, vals)  # (out, G, m)
        return nm_unlayout(groups, torch.Size(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor `to_state` writes (metadata included)."""
        return tensor_bytes(self.to_state().values())


# (n, m) patterns `detect_nm` tries: what sparse tensor cores (2:4) and N:M pruning papers use
NM_PATTERNS: tuple[tuple[int, int], ...] = ((1, 8), (1, 4), (2, 8), (2, 4), (4, 8))


def fits_nm(kept: Tensor, n: int, m: int) -> bool:
    """Whether the kept-entry mask (out, in) of a linear weight is n:m: in divisible by m and
    at most n kept entries in every group of m consecutive inputs."""
    rows, cols = kept.shape
    if cols % m:
        return False
    return bool((kept.reshape(rows, -1, m).sum(2) <= n).all())


def detect_nm(kept: Tensor, patterns: tuple[tuple[int, int], ...] = NM_PATTERNS
              ) -> tuple[int, int] | None:
    """The sparsest (n, m) of `patterns` the mask (out, in) fits (ties: the smaller m, fewer
    index bytes per value), or None when it fits none."""
    fitting = [p for p in patterns if fits_nm(kept, *p)]
    return min(fitting, key=lambda p: (p[0] / p[1], p[1])) if fitting else None
