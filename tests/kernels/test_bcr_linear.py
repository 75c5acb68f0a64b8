"""sparseforge::bcr_linear against F.linear on the masked dense weight, on every ISA path this
CPU runs (compile-time tile heights 1..16, the runtime path above 16, wide index dtypes);
opcheck; and SparseLinear in BCR format."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.formats import BCR
from sparseforge.kernels import SparseLinear, bcr_linear_reference, extension, ops
from sparseforge.sparsity.masks import apply_mask
from sparseforge.sparsity.schemes import bcr

ISAS = extension.supported_isas()
BLOCKS = [(8, 8), (16, 16), (4, 4), (3, 5), (16, 8), (1, 1), (20, 20), (7, 17)]


def bcr_weight(n: int, k: int, block: tuple[int, int], s: float, seed: int):
    """(n, k) weight whose kept entries are, in every block, a random kept-rows x kept-cols
    product (each row/col dropped with probability s); ~10% of kept weights are exactly 0.
    Returns (masked weight, bool mask)."""
    g = torch.Generator().manual_seed(seed)
    r, c = block
    nbr, nbc = -(-n // r), -(-k // c)
    rows = torch.rand(nbr, nbc, r, generator=g) >= s  # kept rows of each block
    cols = torch.rand(nbr, nbc, c, generator=g) >= s
    tiles = rows[..., :, None] & cols[..., None, :]  # (nbr, nbc, r, c)
    mask = tiles.permute(0, 2, 1, 3).reshape(nbr * r, nbc * c)[:n, :k]
    w = torch.randn(n, k, generator=g) * (torch.rand(n, k, generator=g) >= 0.1)
    return w * mask, mask


def packed(w: torch.Tensor, mask: torch.Tensor, block: tuple[int, int]):
    f = BCR.from_dense(w, block=block, mask=mask)
    vt = ops.bcr_tiles_t(f.values, f.group_shapes, f.group_ptr)
    return f.block_ids, f.group_shapes, f.group_ptr, f.row_indices, f.col_indices, vt


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
    w, mask = bcr_weight(n, k, block, s, seed)
    x = torch.randn(batch, k, generator=torch.Generator().manual_seed(seed + 1))
    b = torch.randn(n) if bias else None
    y = extension.kernel("bcr_linear", isa)(x, *packed(w, mask, block), b, n, *block)
    assert y.shape == (batch, n)
    assert_close_rel(y, F.linear(x, w, b))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,k,block", [(300, 70, (260, 3)), (37, 50, (16, 16)),
                                       (256, 300, (8, 8)), (20, 24, (5, 3))])
def test_larger_ragged_shapes_wide_indices_and_leading_dims(isa, n, k, block):
    w, mask = bcr_weight(n, k, block, 0.5, 0)
    x = torch.randn(2, 9, k)  # (..., K): leading dims pass through
    args = packed(w, mask, block)
    assert (args[3].dtype == torch.uint8) == (max(block) <= 256)
    y = extension.kernel("bcr_linear", isa)(x, *args, None, n, *block)
    assert_close_rel(y, F.linear(x, w))


def test_int64_block_ids_and_many_threads_agree():
    w, mask = bcr_weight(64, 96, (8, 8), 0.6, 4)
    ids, *rest = packed(w, mask, (8, 8))
    x = torch.randn(33, 96)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # more threads than blocks of some groups: private buffers
        y = torch.ops.sparseforge.bcr_linear(x, ids.long(), *rest, None, 64, 8, 8)
    finally:
        torch.set_num_threads(threads)
    assert_close_rel(y, F.linear(x, w))


def test_reference_twin_equals_dense_exactly():
    w, mask = bcr_weight(29, 41, (8, 8), 0.5, 3)
    x, b = torch.randn(6, 41), torch.randn(29)
    ref = bcr_linear_reference(x, *packed(w, mask, (8, 8)), b, 29, 8, 8)
    assert torch.equal(ref, F.linear(x, w, b))


def test_all_zero_weight_gives_bias():
    w = torch.zeros(10, 12)
    x, b = torch.randn(3, 12), torch.randn(10)
    y = torch.ops.sparseforge.bcr_linear(x, *packed(w, w != 0, (4, 4)), b, 10, 4, 4)
    assert torch.equal(y, b.expand(3, 10))


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    w, mask = bcr_weight(37, 50, (16, 16), 0.5, 1)
    args = (torch.randn(5, 50), *packed(w, mask, (16, 16)), torch.randn(37) if bias else None,
            37, 16, 16)
    torch.library.opcheck(torch.ops.sparseforge.bcr_linear.default, args)


def test_sparse_linear_bcr_from_scheme_mask_with_kept_zero_matches_dense_and_round_trips():
    torch.manual_seed(0)
    lin = nn.Linear(70, 45)
    mask = bcr(torch.rand(45, 70), 0.8, block=(8, 8))
    with torch.no_grad():
        lin.weight[tuple(mask.nonzero()[0].tolist())] = 0.0  # a kept weight that is exactly 0
    apply_mask(lin, mask)  # from_linear reads this mask, so the zero keeps the tile BCR-shaped
    dense_masked = lin.weight.detach().clone()
    sl = SparseLinear.from_linear(lin, block=(8, 8), format="bcr")
    x = torch.randn(7, 70)
    assert_close_rel(sl(x), F.linear(x, dense_masked, lin.bias))
    assert torch.equal(sl.to_format().to_dense(), dense_masked)
    assert "format=bcr" in repr(sl)


def test_sparse_linear_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown format"):
        SparseLinear.from_linear(nn.Linear(4, 4), format="coo")
