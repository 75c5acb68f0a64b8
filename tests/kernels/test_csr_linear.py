"""sparseforge::csr_linear against F.linear on the masked dense weight, on every ISA path this
CPU runs (the batch-1 dot path and the batched path); opcheck; SparseLinear in CSR format; the
reference fallback per kernel; and the lean import."""


import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.formats import CSR
from sparseforge.kernels import SparseLinear, csr_linear_reference, extension
from sparseforge.sparsity.masks import apply_mask

ISAS = extension.supported_isas()


def sparse_weight(n: int, k: int, s: float, seed: int):
    """(n, k) weight with each entry dropped with probability s; returns (weight, mask)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, k, generator=g) >= s
    return torch.randn(n, k, generator=g) * mask, mask


def packed(w: torch.Tensor, mask: torch.Tensor | None = None, index=torch.int32):
    f = CSR.from_dense(w, mask=mask)
    return f.crow_indices.to(index), f.col_indices.to(index), f.values


def assert_close_rel(y: torch.Tensor, ref: torch.Tensor) -> None:
    scale = max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5 * scale)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 70), k=st.integers(1, 90), s=st.floats(0.0, 1.0),
    batch=st.integers(1, 64), bias=st.booleans(), isa=st.sampled_from(ISAS),
    index=st.sampled_from([torch.int32, torch.int64]), seed=st.integers(0, 2**16),
)
def test_kernel_equals_dense_linear_on_masked_weight(n, k, s, batch, bias, isa, index, seed):
    w, _ = sparse_weight(n, k, s, seed)
    x = torch.randn(batch, k, generator=torch.Generator().manual_seed(seed + 1))
    b = torch.randn(n) if bias else None
    y = extension.kernel("csr_linear", isa)(x, *packed(w, index=index), b, n)
    assert y.shape == (batch, n)
    assert_close_rel(y, F.linear(x, w, b))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,k,lead", [(512, 300, (1,)), (37, 50, (2, 9)), (33, 65, (29,))])
def test_larger_shapes_and_leading_dims(isa, n, k, lead):
    w, mask = sparse_weight(n, k, 0.8, 0)
    x = torch.randn(*lead, k)  # (..., K): leading dims pass through
    y = extension.kernel("csr_linear", isa)(x, *packed(w, mask), None, n)
    assert_close_rel(y, F.linear(x, w))


def test_reference_twin_equals_dense_exactly():
    w, _ = sparse_weight(29, 41, 0.5, 3)
    x, b = torch.randn(6, 41), torch.randn(29)
    assert torch.equal(csr_linear_reference(x, *packed(w), b, 29), F.linear(x, w, b))


def test_all_zero_weight_gives_bias():
    w = torch.zeros(10, 12)
    x, b = torch.randn(3, 12), torch.randn(10)
    assert torch.equal(torch.ops.sparseforge.csr_linear(x, *packed(w), b, 10), b.expand(3, 10))


def test_rejects_mismatched_rows():
    w, _ = sparse_weight(10, 12, 0.5, 0)
    with pytest.raises(RuntimeError, match="out_features"):
        torch.ops.sparseforge.csr_linear(torch.randn(2, 12), *packed(w), None, 11)


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    w, _ = sparse_weight(37, 50, 0.7, 1)
    args = (torch.randn(5, 50), *packed(w), torch.randn(37) if bias else None, 37)
    torch.library.opcheck(torch.ops.sparseforge.csr_linear.default, args)


def test_sparse_linear_csr_from_masked_linear_matches_dense_and_round_trips():
    lin = nn.Linear(50, 37)
    _, mask = sparse_weight(37, 50, 0.8, 2)
    apply_mask(lin, mask)
    dense_masked = lin.weight.detach().clone()
    sl = SparseLinear.from_linear(lin, format="csr")
    for batch in (1, 8):
        x = torch.randn(batch, 50)
        assert_close_rel(sl(x), F.linear(x, dense_masked, lin.bias))
    assert torch.equal(sl.to_format().to_dense(), dense_masked)
    with pytest.raises(TypeError, match="CSR"):
        sl.to_bsr()
