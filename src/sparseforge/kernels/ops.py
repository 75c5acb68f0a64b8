"""Every sparseforge op, on one `torch.library` fragment: schema, fake (meta) implementation for
torch.compile / torch.export, the CPU implementation (the C++ kernel, built on first call) and a
pure-PyTorch `*_reference` twin that defines what the op computes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparseforge.formats.bsr import from_tiles

from . import extension

lib = torch.library.Library("sparseforge", "FRAGMENT")

lib.define(
    "bsr_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values_t, "
    "Tensor? bias, int out_features) -> Tensor"
)


def bsr_linear_reference(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values_t: Tensor,
    bias: Tensor | None, out_features: int,
) -> Tensor:
    """y = x @ W^T + b with W (out_features, K = x.shape[-1]) in BSR: block row i holds tiles
    `values_t[crow[i]:crow[i+1]]` at block columns `col_indices[...]`, each tile stored
    transposed (bw, bh) as the kernel reads it. Densifies W, then F.linear."""
    _, bw, bh = values_t.shape
    nbr, nbc = crow_indices.numel() - 1, -(-x.shape[-1] // bw)
    counts = (crow_indices[1:] - crow_indices[:-1]).long()  # (nbr,)
    brow = torch.repeat_interleave(torch.arange(nbr, device=x.device), counts)  # (nblocks,)
    tiles = values_t.new_zeros(nbr, nbc, bh, bw)
    tiles[brow, col_indices.long()] = values_t.transpose(1, 2)
    weight = from_tiles(tiles, out_features, x.shape[-1])  # (N, K)
    return F.linear(x, weight, bias)


@torch.library.register_fake("sparseforge::bsr_linear", lib=lib)
def _bsr_linear_fake(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values_t: Tensor,
    bias: Tensor | None, out_features: int,
) -> Tensor:
    torch._check(values_t.dim() == 3, lambda: "values_t must be (nblocks, bw, bh)")
    return x.new_empty((*x.shape[:-1], out_features))  # (..., N)


def _bsr_linear_cpu(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values_t: Tensor,
    bias: Tensor | None, out_features: int,
) -> Tensor:
    op = extension.kernel("bsr_linear")
    return op(x, crow_indices, col_indices, values_t, bias, out_features)


lib.impl("bsr_linear", _bsr_linear_cpu, "CPU")


def bsr_linear(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values_t: Tensor,
    bias: Tensor | None, out_features: int,
) -> Tensor:
    """`torch.ops.sparseforge.bsr_linear`: the fast CPU path of `bsr_linear_reference`."""
    return torch.ops.sparseforge.bsr_linear(
        x, crow_indices, col_indices, values_t, bias, out_features
    )
