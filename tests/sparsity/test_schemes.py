import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.sparsity.schemes import SCHEMES, as_matrix, bcr, block, channel, n_m, unstructured

shapes = st.sampled_from([(7, 13), (16, 32), (8, 4, 3, 3), (5, 6, 1, 1), (33, 17)])
fractions = st.floats(0.0, 0.97)


def scores_for(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, s=fractions)
def test_unstructured_hits_target_and_keeps_the_largest(shape, s):
    sc = scores_for(shape)
    mask = unstructured(sc, s)
    assert mask.shape == sc.shape and mask.dtype == torch.bool
    assert (~mask).sum().item() == round(s * sc.numel())
    if mask.any() and (~mask).any():
        assert sc[mask].min() >= sc[~mask].max()


@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (1, 4), (3, 8), (4, 8)])
@pytest.mark.parametrize("shape", [(16, 32), (6, 8, 3, 3)])
def test_nm_has_exactly_n_in_every_group_of_m(n, m, shape):
    sc = scores_for(shape)
    mask = n_m(sc, 1 - n / m, n=n, m=m)
    # groups run along input channels: (out, kh, kw, in) layout
    layout = mask.permute(0, 2, 3, 1) if mask.dim() == 4 else mask
    counts = layout.reshape(-1, m).sum(1)
    assert torch.all(counts == n)
    # and they keep the top n of each group
    sc_layout = (sc.permute(0, 2, 3, 1) if sc.dim() == 4 else sc).reshape(-1, m)
    kept_min = torch.where(layout.reshape(-1, m), sc_layout, torch.inf).min(1).values
    dropped_max = torch.where(layout.reshape(-1, m), -torch.inf, sc_layout).max(1).values
    assert torch.all(kept_min >= dropped_max)


def test_nm_gradual_keeps_more_before_the_final_target():
    sc = scores_for((8, 16))
    assert n_m(sc, 0.0, n=2, m=4).all()
    assert torch.all(n_m(sc, 0.25, n=2, m=4).reshape(-1, 4).sum(1) == 3)
    assert torch.all(n_m(sc, 0.9, n=2, m=4).reshape(-1, 4).sum(1) == 2)  # never below n


def test_nm_rejects_indivisible_inputs_with_advice():
    with pytest.raises(ValueError, match="not divisible by the N:M group size 4; exclude"):
        n_m(scores_for((8, 6)), 0.5, n=2, m=4)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, s=fractions)
def test_channel_removes_whole_output_channels(shape, s):
    sc = scores_for(shape)
    mask = channel(sc, s)
    rows = as_matrix(mask)
    assert torch.all(rows.all(1) | (~rows).all(1))  # each channel all kept or all pruned
    n_pruned = (~rows.all(1)).sum().item()
    assert n_pruned == min(round(s * shape[0]), shape[0] - 1)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, s=fractions, bh=st.integers(1, 5), bw=st.integers(1, 5))
def test_block_prunes_whole_tiles_including_ragged_edges(shape, s, bh, bw):
    sc = scores_for(shape)
    mask = as_matrix(block(sc, s, block=(bh, bw)))
    rows, cols = mask.shape
    n_tiles = math.ceil(rows / bh) * math.ceil(cols / bw)
    pruned_tiles = 0
    for i in range(0, rows, bh):
        for j in range(0, cols, bw):
            tile = mask[i : i + bh, j : j + bw]
            assert tile.all() or (~tile).all()
            pruned_tiles += int((~tile).all())
    assert pruned_tiles == round(s * n_tiles)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, s=fractions, r=st.integers(1, 6), c=st.integers(1, 6))
def test_bcr_blocks_compact_to_dense_tiles(shape, s, r, c):
    sc = scores_for(shape)
    mask = as_matrix(bcr(sc, s, block=(r, c)))
    rows, cols = mask.shape
    for i in range(0, rows, r):
        for j in range(0, cols, c):
            tile = mask[i : i + r, j : j + c]
            kept_rows, kept_cols = tile.any(1), tile.any(0)
            # the kept part of every block is the cross product of kept rows and kept columns
            assert torch.equal(tile, kept_rows[:, None] & kept_cols[None, :])
    achieved = 1 - mask.float().mean().item()
    assert achieved >= s - 1.0 / mask.numel() - 1e-9  # reaches the target ...
    assert achieved <= s + max(r, c) / mask.numel() + 1e-9  # ... overshooting by < one segment


def test_bcr_blocks_keep_different_rows_and_columns():
    torch.manual_seed(0)
    mask = bcr(torch.rand(32, 32), 0.75, block=(8, 8))
    patterns = {
        (tuple(mask[i : i + 8, j : j + 8].any(1).tolist()), tuple(mask[i : i + 8, j : j + 8].any(0).tolist()))
        for i in range(0, 32, 8)
        for j in range(0, 32, 8)
    }
    assert len(patterns) > 1


@pytest.mark.parametrize("name", SCHEMES.names())
def test_every_scheme_keeps_all_at_zero_sparsity(name):
    assert SCHEMES.get(name)(scores_for((8, 16)), 0.0).all()


def test_sparsity_out_of_range_is_an_error():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        unstructured(scores_for((4, 4)), 1.5)
