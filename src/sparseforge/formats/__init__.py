"""Lossless compact storage formats for sparse weights (CSR, BSR, N:M, BCR), the data layer
sparse kernels consume; tensors only, so they save inside state dicts."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .bcr import BCR, TileGroup
from .bsr import BSR
from .csr import CSR
from .nm import NM

Format = CSR | BSR | NM | BCR
FORMATS: dict[str, type[CSR] | type[BSR] | type[NM] | type[BCR]] = {
    "unstructured": CSR, "block": BSR, "nm": NM, "bcr": BCR,
}
_BY_KIND = {cls.KIND: cls for cls in FORMATS.values()}


def to_format(
    weight: Tensor, scheme_name: str, mask: Tensor | None = None, **params: Any
) -> Format:
    """The format matching a scheme's masks: 'unstructured' -> CSR, 'block' -> BSR (block=),
    'nm' or 'N:M' such as '2:4' -> NM (n=, m=), 'bcr' -> BCR (block=)."""
    nm = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", scheme_name)
    if nm:
        scheme_name, params = "nm", {**params, "n": int(nm[1]), "m": int(nm[2])}
    if scheme_name not in FORMATS:
        raise ValueError(
            f"no compact format for scheme '{scheme_name}'; formats exist for "
            f"{', '.join(FORMATS)} (any sparse weight can be stored as CSR: "
            "to_format(weight, 'unstructured'))"
        )
    return FORMATS[scheme_name].from_dense(weight, mask=mask, **params)


def load_format(state: Mapping[str, Tensor], prefix: str = "") -> Format:
    """Rebuild whichever format `to_state(prefix)` wrote, read from its `format` entry."""
    key = prefix + "format"
    if key not in state:
        raise KeyError(
            f"state has no {key!r}; was it written by a format's to_state(prefix={prefix!r})?"
        )
    kind = int(state[key].reshape(-1)[0])
    if kind not in _BY_KIND:
        raise ValueError(f"{key!r} = {kind} names no known format ({sorted(_BY_KIND)})")
    return _BY_KIND[kind].from_state(state, prefix)


@dataclass(frozen=True)
class StorageReport:
    """Dense bytes vs format bytes of one weight."""

    format: str
    dense_bytes: int
    format_bytes: int

    @property
    def ratio(self) -> float:
        """Dense / format bytes: above 1 the format saves space."""
        return self.dense_bytes / self.format_bytes


def storage_report(weight: Tensor, fmt: Format) -> StorageReport:
    """Compare `fmt` with the dense `weight` it stores."""
    if tuple(weight.shape) != tuple(fmt.shape):
        raise ValueError(
            f"weight shape {tuple(weight.shape)} differs from the format's {fmt.shape}"
        )
    return StorageReport(type(fmt).__name__, weight.numel() * weight.element_size(), fmt.nbytes)


__all__ = [
    "BCR", "BSR", "CSR", "FORMATS", "NM", "Format", "StorageReport", "TileGroup", "load_format",
    "storage_report", "to_format",
]
