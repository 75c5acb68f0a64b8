import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.formats import BCR
from sparseforge.sparsity.schemes import as_matrix

shapes = st.sampled_from([(7, 13), (16, 32), (8, 4, 3, 3), (5, 6, 1, 1), (33, 17), (1, 1), (9,)])
blocks = st.tuples(st.integers(1, 6), st.integers(1, 6))


def dense_blocks(w, block):
    """{block id: (kept rows, kept cols, the block's entries)} from the dense GEMM view."""
    mat, (r, c) = as_matrix(w), block
    n_bc = -(-mat.shape[1] // c)
    out = {}
    for br, bc in itertools.product(range(-(-mat.shape[0] // r)), range(n_bc)):
        tile = mat[br * r:(br + 1) * r, bc * c:(bc + 1) * c]
        rows, cols = tile.ne(0).any(1).nonzero()[:, 0], tile.ne(0).any(0).nonzero()[:, 0]
        out[br * n_bc + bc] = (rows, cols, tile)
    return out


@settings(max_examples=50, deadline=None)
@given(shape=shapes, block=blocks, s=st.floats(0.0, 0.99), seed=st.integers(0, 2**16))
def test_round_trip_and_tiles_equal_the_kept_cross_products(make_weight, shape, block, s, seed):
    w, mask = make_weight(shape, "bcr", s, seed, block=block)
    f = BCR.from_dense(w, block=block)
    assert torch.equal(f.to_dense(), w)
    assert torch.equal(BCR.from_dense(w, block=block, mask=mask).to_dense(), w)

    expected = dense_blocks(w, block)
    seen = []
    for g in f.groups():
        stored = zip(g.block_ids.tolist(), g.rows, g.cols, g.tiles, strict=True)
        for bid, rows, cols, tile in stored:
            e_rows, e_cols, e_tile = expected[bid]
            assert (len(e_rows), len(e_cols)) == (g.kept_rows, g.kept_cols)
            assert torch.equal(rows.long(), e_rows) and torch.equal(cols.long(), e_cols)
            assert torch.equal(tile, e_tile[e_rows][:, e_cols])
            seen.append(bid)
    # exactly the nonempty blocks are stored, each once
    assert sorted(seen) == [b for b, (rows, _, _) in expected.items() if len(rows)]


@settings(max_examples=30, deadline=None)
@given(shape=st.sampled_from([(32, 48), (16, 8, 3, 3), (30, 45)]), s=st.floats(0.3, 0.95),
       seed=st.integers(0, 2**16))
def test_reorder_makes_equal_tile_shapes_contiguous(make_weight, shape, s, seed):
    w, _ = make_weight(shape, "bcr", s, seed, block=(4, 4))
    f = BCR.from_dense(w, block=(4, 4))
    shapes_in_order = [tuple(k) for k in f.group_shapes.tolist()]
    assert shapes_in_order == sorted(set(shapes_in_order))  # each shape once, ascending
    expected = dense_blocks(w, (4, 4))
    per_block = [(len(expected[b][0]), len(expected[b][1])) for b in f.block_ids.tolist()]
    runs = [k for k, _ in itertools.groupby(per_block)]
    assert len(runs) == len(set(per_block))  # one contiguous run per pattern
    ptr = f.group_ptr.tolist()
    for g, (lo, hi) in enumerate(zip(ptr[:-1], ptr[1:], strict=True)):
        assert set(per_block[lo:hi]) == {shapes_in_order[g]}
        ids = f.block_ids[lo:hi]
        assert torch.all(ids[1:] > ids[:-1])  # block order kept within a group


def test_conv_weight_round_trips_through_its_gemm_view(make_weight):
    w, _ = make_weight((12, 5, 3, 3), "bcr", 0.8, block=(4, 6))
    f = BCR.from_dense(w, block=(4, 6))
    assert f.shape == (12, 5, 3, 3) and f.grid == (3, 8)
    assert torch.equal(f.to_dense(), w)


def test_rejects_nonzeros_that_are_not_a_rows_by_cols_tile():
    w = torch.zeros(4, 8)
    w[1, 5], w[2, 6] = 1.0, 2.0  # block (0, 1) keeps rows 1, 2 and cols 5, 6 but not (1, 6)
    message = (
        r"not BCR-shaped for block \(4, 4\): in block \(0, 1\) of the GEMM view, row 1 and "
        r"column 6 both hold kept entries but entry \(1, 6\) is not kept.*prune it with the "
        r"`bcr` scheme first; .*pass its mask"
    )
    with pytest.raises(ValueError, match=message):
        BCR.from_dense(w, block=(4, 4))


def test_a_zero_weight_inside_a_kept_tile_needs_the_mask():
    w = torch.zeros(4, 4)
    w[0:2, 0:2] = torch.tensor([[1.0, 0.0], [3.0, 4.0]])  # (0, 1) trained to exactly 0
    with pytest.raises(ValueError, match="not BCR-shaped"):
        BCR.from_dense(w, block=(4, 4))
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0:2, 0:2] = True
    f = BCR.from_dense(w, block=(4, 4), mask=mask)
    assert f.group_shapes.tolist() == [[2, 2]] and f.values.tolist() == [1.0, 0.0, 3.0, 4.0]
    assert torch.equal(f.to_dense(), w)


def test_rejects_a_mask_that_is_not_bcr_shaped():
    mask = torch.eye(4, dtype=torch.bool)
    message = "the mask is not BCR-shaped.*build the mask with the `bcr`"
    with pytest.raises(ValueError, match=message):
        BCR.from_dense(torch.eye(4), block=(4, 4), mask=mask)
