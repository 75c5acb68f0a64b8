"""sparseforge::bsr_linear against F.linear on the masked dense weight, on every ISA path this
CPU runs; opcheck; the reference fallback; and the lean import."""


import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.formats import BSR
from sparseforge.kernels import SparseLinear, bsr_linear_reference, extension
from sparseforge.sparsity.masks import apply_mask

ISAS = extension.supported_isas()
BLOCKS = [(16, 16), (8, 8), (4, 4), (3, 5), (16, 8), (1, 1)]


def block_sparse_weight(n: int, k: int, block: tuple[int, int], s: float, seed: int):
    """(n, k) weight, zero outside kept tiles (each dropped with probability s) and with ~10%
    zeros inside them too; returns (masked weight, bool mask)."""
    g = torch.Generator().manual_seed(seed)
    bh, bw = block
    tiles = torch.rand(-(-n // bh), -(-k // bw), generator=g) >= s
    mask = tiles.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:n, :k]
    mask &= torch.rand(n, k, generator=g) >= 0.1
    return torch.randn(n, k, generator=g) * mask, mask


def packed(w: torch.Tensor, block: tuple[int, int]):
    f = BSR.from_dense(w, block=block)
    return f.crow_indices, f.col_indices, f.values.transpose(1, 2).contiguous()


def assert_close_rel(y: torch.Tensor, ref: torch.Tensor) -> None:
    scale = max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5 * scale)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 70), k=st.integers(1, 70), block=st.sampled_from(BLOCKS),
    s=st.floats(0.0, 0.99), batch=st.integers(1, 64), bias=st.booleans(),
    isa=st.sampled_from(ISAS), seed=st.integers(0, 2**16),
)
def test_kernel_equals_dense_linear_on_masked_weight(n, k, block, s, batch, bias, isa, seed):
    w, _ = block_sparse_weight(n, k, block, s, seed)
    x = torch.randn(batch, k, generator=torch.Generator().manual_seed(seed + 1))
    b = torch.randn(n) if bias else None
    crow, col, vt = packed(w, block)
    y = extension.kernel("bsr_linear", isa)(x, crow, col, vt, b, n)
    assert y.shape == (batch, n)
    assert_close_rel(y, F.linear(x, w, b))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,k,block", [(4096 // 16, 300, (16, 16)), (37, 50, (16, 16)),
                                       (33, 65, (8, 8)), (20, 24, (5, 3))])
def test_larger_ragged_shapes_and_leading_dims(isa, n, k, block):
    w, _ = block_sparse_weight(n, k, block, 0.7, 0)
    x = torch.randn(2, 9, k)  # (..., K): leading dims pass through
    crow, col, vt = packed(w, block)
    y = extension.kernel("bsr_linear", isa)(x, crow, col, vt, None, n)
    assert_close_rel(y, F.linear(x, w))


def test_reference_twin_equals_dense_exactly():
    w, _ = block_sparse_weight(29, 41, (8, 8), 0.5, 3)
    x, b = torch.randn(6, 41), torch.randn(29)
    assert torch.equal(bsr_linear_reference(x, *packed(w, (8, 8)), b, 29), F.linear(x, w, b))


def test_all_zero_weight_gives_bias():
    w = torch.zeros(10, 12)
    x, b = torch.randn(3, 12), torch.randn(10)
    y = torch.ops.sparseforge.bsr_linear(x, *packed(w, (4, 4)), b, 10)
    assert torch.equal(y, b.expand(3, 10))


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    w, _ = block_sparse_weight(37, 50, (16, 16), 0.5, 1)
    args = (torch.randn(5, 50), *packed(w, (16, 16)), torch.randn(37) if bias else None, 37)
    torch.library.opcheck(torch.ops.sparseforge.bsr_linear.default, args)


def test_sparse_linear_from_masked_and_baked_linear_matches_dense():
    lin = nn.Linear(50, 37)
    w, mask = block_sparse_weight(37, 50, (16, 16), 0.6, 2)
    apply_mask(lin, mask)
    dense_masked = lin.weight.detach().clone()
    x = torch.randn(8, 50)
    sl = SparseLinear.from_linear(lin, block=(16, 16))
    assert_close_rel(sl(x), F.linear(x, dense_masked, lin.bias))
    assert torch.equal(sl.to_bsr().to_dense(), dense_masked)
    baked = nn.Linear(50, 37, bias=False)
    with torch.no_grad():
        baked.weight.copy_(dense_masked)
    assert_close_rel(SparseLinear.from_linear(baked, (8, 8))(x), F.linear(x, dense_masked))
