"""`SparseLinear`: an nn.Linear whose weight is stored as BSR, BCR or CSR and multiplied by the
matching C++ kernel (`sparseforge::{bsr,bcr,csr}_linear`), or by its reference twin when that
kernel cannot be built."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sparseforge.formats import BCR, BSR, CSR
from sparseforge.sparsity.masks import get_mask

from . import extension, ops

FORMATS: dict[str, type[BSR] | type[BCR] | type[CSR]] = {"bsr": BSR, "bcr": BCR, "csr": CSR}
# format -> (fast op, reference twin, buffer names in argument order after x)
_OPS: dict[str, tuple[Callable[..., Tensor], Callable[..., Tensor], tuple[str, ...]]] = {
    "bsr": (ops.bsr_linear, ops.bsr_linear_reference,
            ("crow_indices", "col_indices", "values_t")),
    "bcr": (ops.bcr_linear, ops.bcr_linear_reference,
            ("block_ids", "group_shapes", "group_ptr", "row_indices", "col_indices", "values_t")),
    "csr": (ops.csr_linear, ops.csr_linear_reference,
            ("crow_indices", "col_indices", "values")),
}


def _buffers(fmt: BSR | BCR | CSR) -> dict[str, Tensor]:
    """The op's tensor arguments for a stored weight (tiles transposed where the kernel wants)."""
    if isinstance(fmt, BSR):
        return {"crow_indices": fmt.crow_indices, "col_indices": fmt.col_indices,
                "values_t": fmt.values.transpose(1, 2).contiguous()}  # (nb, bw, bh)
    if isinstance(fmt, BCR):
        return {"block_ids": fmt.block_ids, "group_shapes": fmt.group_shapes,
                "group_ptr": fmt.group_ptr, "row_indices": fmt.row_indices,
                "col_indices": fmt.col_indices,
                "values_t": ops.bcr_tiles_t(fmt.values, fmt.group_shapes, fmt.group_ptr)}
    return {"crow_indices": fmt.crow_indices, "col_indices": fmt.col_indices,
            "values": fmt.values}


class SparseLinear(nn.Module):
    """y = x @ W^T + b with W held as BSR tiles, BCR compacted tiles or CSR nonzeros."""

    def __init__(self, fmt: BSR | BCR | CSR, bias: Tensor | None) -> None:
        super().__init__()
        self.format = next(k for k, cls in FORMATS.items() if isinstance(fmt, cls))
        self.out_features, self.in_features = fmt.matrix_shape
        self.block = getattr(fmt, "block", None)
        for name, t in _buffers(fmt).items():
            self.register_buffer(name, t)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, block: tuple[int, int] = (16, 16), format: str = "bsr",
        mask: Tensor | None = None,
    ) -> SparseLinear:
        """Convert a masked (parametrized) or baked nn.Linear: `linear.weight` reads as the
        masked weight either way. The kept entries are `mask`, else the layer's own mask (so a
        kept weight that is exactly 0 keeps its place), else the nonzeros. `format`: 'bsr'
        (tiles with no kept entry dropped), 'bcr' (kept entries must be BCR-shaped for `block`,
        e.g. a `bcr`-scheme mask) or 'csr' (`block` unused)."""
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; choose from {sorted(FORMATS)}")
        mask = get_mask(linear) if mask is None else mask
        with torch.no_grad():
            w = linear.weight.detach()
            if format == "csr":
                fmt = CSR.from_dense(w, mask=mask)
            else:
                fmt = FORMATS[format].from_dense(w, block, mask=mask)
        return cls(fmt, linear.bias)

    def to_format(self) -> BSR | BCR | CSR:
        """The weight back in its storage format."""
        shape = (self.out_features, self.in_features)
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
        use_kernel = x.device.type == "cpu" and x.dtype == torch.float32
        # under torch.compile the op stays an opaque call (its fake impl gives the shape); the
        # build check runs in eager calls only, so it never breaks the graph
        if use_kernel and (torch.compiler.is_compiling() or extension.kernel_available(f"{self.format}_linear")):
            return fast(*args)
        return reference(*args)

    def extra_repr(self) -> str:
        stored = self.values.numel() if self.format == "csr" else self.values_t.numel()
        block = "" if self.block is None else f", block={self.block}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.format}{block}, stored_values={stored}")
