"""`SparseLinear`: an nn.Linear whose weight is stored as BSR, BCR, CSR or N:M and multiplied by
the matching op (`sparseforge::{bsr,bcr,csr,nm}_linear`: C++ on CPU, Triton on CUDA for all but
CSR), or by its reference twin when that kernel cannot run."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sparseforge.formats import BCR, BSR, CSR, NM
from sparseforge.formats.nm import detect_nm
from sparseforge.sparsity.masks import get_mask

from . import ops

FORMATS: dict[str, type[BSR] | type[BCR] | type[CSR] | type[NM]] = {
    "bsr": BSR, "bcr": BCR, "csr": CSR, "nm": NM,
}
CUDA_FORMATS = ("bsr", "bcr", "nm")  # formats with a Triton kernel
# format -> (fast op, reference twin, buffer names in argument order after x)
_OPS: dict[str, tuple[Callable[..., Tensor], Callable[..., Tensor], tuple[str, ...]]] = {
    "bsr": (ops.bsr_linear, ops.bsr_linear_reference,
            ("crow_indices", "col_indices", "values_t")),
    "bcr": (ops.bcr_linear, ops.bcr_linear_reference,
            ("block_ids", "group_shapes", "group_ptr", "row_indices", "col_indices", "values_t")),
    "csr": (ops.csr_linear, ops.csr_linear_reference,
            ("crow_indices", "col_indices", "values")),
    "nm": (ops.nm_linear, ops.nm_linear_reference, ("values", "indices")),
}


def _buffers(fmt: BSR | BCR | CSR | NM) -> dict[str, Tensor]:
    """The op's tensor arguments for a stored weight (tiles transposed where the kernel wants)."""
    if isinstance(fmt, BSR):
        return {"crow_indices": fmt.crow_indices, "col_indices": fmt.col_indices,
                "values_t": fmt.values.transpose(1, 2).contiguous()}  # (nb, bw, bh)
    if isinstance(fmt, BCR):
        return {"block_ids": fmt.block_ids, "group_shapes": fmt.group_shapes,
                "group_ptr": fmt.group_ptr, "row_indices": fmt.row_indices,
                "col_indices": fmt.col_indices,
                "values_t": ops.bcr_tiles_t(fmt.values, fmt.group_shapes, fmt.group_ptr)}
    if isinstance(fmt, NM):
        return {"values": fmt.values, "indices": fmt.indices}
    return {"crow_indices": fmt.crow_indices, "col_indices": fmt.col_indices,
            "values": fmt.values}


class SparseLinear(nn.Module):
    """y = x @ W^T + b with W held as BSR tiles, BCR compacted tiles, CSR nonzeros or N:M groups."""

    def __init__(self, fmt: BSR | BCR | CSR | NM, bias: Tensor | None) -> None:
        super().__init__()
        self.format = next(k for k, cls in FORMATS.items() if isinstance(fmt, cls))
        if isinstance(fmt, NM):
            if len(fmt.shape) != 2:
                raise ValueError(f"SparseLinear needs a 2-D N:M weight, got shape {fmt.shape}")
            self.out_features, self.in_features = fmt.shape
        else:
            self.out_features, self.in_features = fmt.matrix_shape
        self.block = getattr(fmt, "block", None)
        self.nm = (fmt.n, fmt.m) if isinstance(fmt, NM) else None
        for name, t in _buffers(fmt).items():
            self.register_buffer(name, t)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, block: tuple[int, int] = (16, 16), format: str = "bsr",
        mask: Tensor | None = None, nm: tuple[int, int] | None = None,
    ) -> SparseLinear:
        """Convert a masked (parametrized) or baked nn.Linear: `linear.weight` reads as the
        masked weight either way. The kept entries are `mask`, else the layer's own mask (so a
        kept weight that is exactly 0 keeps its place), else the nonzeros. `format`: 'bsr'
        (tiles with no kept entry dropped), 'bcr' (kept entries must be BCR-shaped for `block`,
        e.g. a `bcr`-scheme mask), 'csr' (`block` unused) or 'nm' (N:M groups along the inputs;
        `nm` = (n, m), else the sparsest of `formats.nm.NM_PATTERNS` the mask fits)."""
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; choose from {sorted(FORMATS)}")
        mask = get_mask(linear) if mask is None else mask
        with torch.no_grad():
            w = linear.weight.detach()
            if format == "csr":
                fmt = CSR.from_dense(w, mask=mask)
            elif format == "nm":
                kept = (w != 0) if mask is None else mask.bool()
                nm = nm or detect_nm(kept)
                if nm is None:
                    raise ValueError("the weight fits none of the N:M patterns "
                                     "sparseforge.formats.nm.NM_PATTERNS; prune it with the `nm` "
                                     "scheme or pass nm=(n, m)")
                fmt = NM.from_dense(w, *nm, mask=mask)
            else:
                fmt = FORMATS[format].from_dense(w, block, mask=mask)
        return cls(fmt, linear.bias)

    def to_format(self) -> BSR | BCR | CSR | NM:
        """The weight back in its storage format."""
        shape = (self.out_features, self.in_features)
        if self.format == "nm":
            return NM(shape, *self.nm, self.values, self.indices)
        if self.format == "bsr":
            return BSR(shape, self.block, self.crow_indices, self.col_indices,
                       self.values_t.transpose(1, 2).contiguous())
        if self.format == "bcr":
            values = ops.bcr_tiles_t(self.values_t, self.group_shapes, self.group_ptr,
                                     inverse=True)
            return BCR(shape, self.block, self.block_ids, self.group_shapes, self.group_ptr,
                       self.row_indices, self.col_indices, values)
        return CSR(shape, self.crow_indices, self.col_indices, self.values)

    def to_bsr(self) -> BSR:
        """The weight as BSR (for a BSR-stored layer)."""
        if self.format != "bsr":
            raise TypeError(f"this layer stores {self.format.upper()}; use to_format()")
        return self.to_format()  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        fast, reference, names = _OPS[self.format]
        args = (x, *(getattr(self, n) for n in names), self.bias, self.out_features)
        if self.format == "bcr":
            args = (*args, *self.block)
        if self.format == "nm":
            args = (*args, *self.nm)
        if x.device.type == "cuda" and self.format in CUDA_FORMATS:
            return fast(*args)  # Triton (triton_sparse_linear.py)
        if ops.cpu_kernel_runs(x, f"{self.format}_linear"):
            return fast(*args)
        return reference(*args)

    def extra_repr(self) -> str:
        stored = self.values.numel() if self.format in ("csr", "nm") else self.values_t.numel()
        block = "" if self.block is None else f", block={self.block}"
        if self.nm is not None:
            block = f", n={self.nm[0]}, m={self.nm[1]}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.format}{block}, stored_values={stored}")
