import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.formats import BSR
from sparseforge.sparsity.schemes import as_matrix

shapes = st.sampled_from([(7, 13), (16, 32), (8, 4, 3, 3), (5, 6, 1, 1), (33, 17), (1, 1), (9,)])
blocks = st.tuples(st.integers(1, 5), st.integers(1, 5))


@settings(max_examples=50, deadline=None)
@given(shape=shapes, block=blocks, s=st.floats(0.0, 0.99), seed=st.integers(0, 2**16))
def test_round_trip_is_exact_on_ragged_sizes(make_weight, shape, block, s, seed):
    w, mask = make_weight(shape, "block", s, seed, block=block)
    f = BSR.from_dense(w, block=block)
    assert torch.equal(f.to_dense(), w)
    bh, bw = block
    rows, cols = as_matrix(w).shape
    tiles = torch.nn.functional.pad(as_matrix(mask), (0, -cols % bw, 0, -rows % bh))
    n_kept = int(tiles.reshape(-(-rows // bh), bh, -1, bw).any(3).any(1).sum())
    assert f.values.shape == (n_kept, bh, bw)
    assert len(f.crow_indices) == -(-rows // bh) + 1 and f.crow_indices[-1] == n_kept


@pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta")
def test_matches_torch_bsr_on_divisible_sizes(make_weight):
    w, _ = make_weight((16, 8, 3, 3), "block", 0.7, block=(4, 8))
    f = BSR.from_dense(w, block=(4, 8))
    ref = as_matrix(w).to_sparse_bsr((4, 8))
    assert torch.equal(f.crow_indices.long(), ref.crow_indices())
    assert torch.equal(f.col_indices.long(), ref.col_indices())
    assert torch.equal(f.values, ref.values())


def test_ragged_edge_tiles_are_zero_padded_and_cropped_back():
    w = torch.zeros(5, 7)
    w[4, 6] = 3.0  # lone entry in the bottom-right edge tile
    f = BSR.from_dense(w, block=(4, 4))
    assert f.grid == (2, 2)
    assert f.crow_indices.tolist() == [0, 0, 1] and f.col_indices.tolist() == [1]
    expected = torch.zeros(4, 4)
    expected[0, 2] = 3.0
    assert torch.equal(f.values[0], expected)
    assert torch.equal(f.to_dense(), w)


def test_a_tile_with_any_nonzero_is_kept_whole():
    w = torch.zeros(4, 4)
    w[1, 2] = -1.0
    f = BSR.from_dense(w, block=(2, 2))
    assert f.values.shape == (1, 2, 2) and f.col_indices.tolist() == [1]
    assert f.crow_indices.tolist() == [0, 1, 1]
