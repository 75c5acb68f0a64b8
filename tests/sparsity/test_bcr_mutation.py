"""BCR segment mutation: exact nonzero count, BCR shape, drop lowest / grow highest."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.sparsity.bcr_mutation import BCRSegments


def is_bcr(mask, r, c):
    """Every r x c block keeps (its kept rows) x (its kept columns)."""
    for i in range(0, mask.shape[0], r):
        for j in range(0, mask.shape[1], c):
            b = mask[i:i + r, j:j + c]
            if not torch.equal(b, b.any(1, keepdim=True) & b.any(0, keepdim=True)):
                return False
    return True


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 23), cols=st.integers(1, 29), r=st.integers(1, 6), c=st.integers(1, 6),
       sparsity=st.floats(0.0, 0.95), rate=st.floats(0.0, 1.0), seed=st.integers(0, 99),
       by_score=st.booleans())
def test_mutation_keeps_the_count_and_the_bcr_shape(rows, cols, r, c, sparsity, rate, seed,
                                                    by_score):
    g = torch.Generator().manual_seed(seed)
    seg = BCRSegments.random((rows, cols), (r, c), sparsity, g)
    assert is_bcr(seg.mask(), r, c)
    before = seg.nonzeros()
    for _ in range(3):
        grow = torch.rand(rows, cols, generator=g) if by_score else None
        seg = seg.mutate(torch.rand(rows, cols, generator=g), rate, g, grow)
        assert seg.nonzeros() == before and is_bcr(seg.mask(), r, c)


def test_conv_weights_use_their_gemm_view():
    g = torch.Generator().manual_seed(0)
    seg = BCRSegments.random((8, 3, 3, 3), (4, 9), 0.75, g)
    assert seg.mask().shape == (8, 3, 3, 3) and seg.rows.shape == (8, 3) and seg.cols.shape == (2, 27)
    moved = seg.mutate(torch.rand(8, 3, 3, 3, generator=g), 0.5, g)
    assert moved.nonzeros() == seg.nonzeros()


def test_drops_the_weakest_row_segment_and_grows_the_strongest():
    # one 2x2 block row, two block columns; both columns kept everywhere, so every row
    # segment holds 2 weights: one size class
    rows = torch.tensor([[True, False], [True, True]])
    seg = BCRSegments(rows, torch.ones(1, 4, dtype=torch.bool), (2, 2), torch.Size((2, 4)))
    drop = torch.tensor([[1.0, 1.0, 9.0, 9.0], [5.0, 5.0, 0.1, 0.1]])  # (1, 1) is weakest
    grow = torch.zeros(2, 4)
    grow[0, 2:] = 3.0  # the only dropped-or-empty segment worth growing: (0, 1)
    out = seg.mutate(drop, 0.34, torch.Generator().manual_seed(0), grow)  # 1 of 3 swaps
    assert out.rows.tolist() == [[True, True], [True, False]]
    assert torch.equal(out.cols, seg.cols) and out.nonzeros() == seg.nonzeros()
