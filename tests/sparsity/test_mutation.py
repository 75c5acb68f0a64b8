import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.sparsity.mutation import (
    Units,
    drop_lowest,
    drop_lowest_groups,
    erk_densities,
    grow_by_score,
    grow_groups_by_score,
    grow_groups_random,
    grow_random,
)
from sparseforge.sparsity.schemes import block

shapes = st.sampled_from([(7, 13), (16, 32), (8, 4, 3, 3), (33, 17)])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_mask(shape, density=0.3, seed=0):
    return torch.rand(shape, generator=gen(seed)) < density


@settings(max_examples=30, deadline=None)
@given(shape=shapes, frac=st.floats(0.0, 1.0), seed=st.integers(0, 5))
def test_drop_lowest_turns_off_exactly_the_n_lowest_active(shape, frac, seed):
    mask, scores = random_mask(shape, seed=seed), torch.rand(shape, generator=gen(seed + 9))
    n = int(frac * mask.sum())
    out = drop_lowest(mask, scores, n)
    assert out.shape == mask.shape and out.dtype == torch.bool
    assert not (out & ~mask).any()  # nothing inactive became active
    dropped = mask & ~out
    assert int(dropped.sum()) == n
    if 0 < n < int(mask.sum()):
        assert scores[dropped].max() <= scores[out].min()


@settings(max_examples=30, deadline=None)
@given(shape=shapes, frac=st.floats(0.0, 1.0), seed=st.integers(0, 5))
def test_grow_by_score_turns_on_the_n_best_inactive_and_never_an_active(shape, frac, seed):
    mask, scores = random_mask(shape, seed=seed), torch.rand(shape, generator=gen(seed + 9))
    n = int(frac * (~mask).sum())
    out = grow_by_score(mask, scores, n)
    assert torch.equal(out & mask, mask)  # every active entry stays
    grown = out & ~mask
    assert int(grown.sum()) == n
    if 0 < n < int((~mask).sum()):
        assert scores[grown].min() >= scores[~out].max()


def test_grow_random_is_seeded_exact_and_only_picks_inactive():
    mask = random_mask((20, 30), density=0.5)
    a = grow_random(mask, 40, gen(3))
    b = grow_random(mask, 40, gen(3))
    c = grow_random(mask, 40, gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    for out in (a, c):
        assert torch.equal(out & mask, mask)
        assert int((out & ~mask).sum()) == 40


def test_where_restricts_candidates_and_ties_go_to_the_lower_index():
    mask = torch.tensor([True, True, True, False, False, False])
    where = torch.tensor([False, True, True, False, True, True])
    flat = torch.zeros(6)
    assert drop_lowest(mask, flat, 1, where).tolist() == [True, False, True, False, False, False]
    assert grow_by_score(mask, flat, 1, where).tolist() == [True, True, True, False, True, False]
    grown = grow_random(mask, 2, gen(), where)
    assert grown.tolist() == [True, True, True, False, True, True]


def test_asking_for_more_than_is_eligible_is_an_error():
    mask = torch.tensor([True, False, False])
    with pytest.raises(ValueError, match="cannot drop 2 entries: only 1"):
        drop_lowest(mask, torch.rand(3), 2)
    with pytest.raises(ValueError, match="cannot grow 3 entries: only 2"):
        grow_random(mask, 3, gen())
    with pytest.raises(TypeError, match="bool"):
        drop_lowest(mask.float(), torch.rand(3), 1)


def test_group_mutations_move_whole_tiles_by_mean_score():
    scores = torch.rand(8, 12, generator=gen(1))
    mask = block(torch.rand(8, 12, generator=gen(2)), 0.5, block=(2, 3))  # 16 tiles, 8 kept
    units = Units(mask.shape, (2, 3))
    assert int(units.units(mask).sum()) == 8
    dropped = drop_lowest_groups(mask, scores, 2, (2, 3))
    assert units.units(dropped).sum() == 6 and int((mask & ~dropped).sum()) == 2 * 6
    means = units.pool(scores)
    gone = units.units(mask) & ~units.units(dropped)
    assert means[gone].max() <= means[units.units(dropped)].min()
    grown = grow_groups_by_score(mask, scores, 3, (2, 3))
    new = units.units(grown) & ~units.units(mask)
    assert int(new.sum()) == 3 and means[new].min() >= means[~units.units(grown)].max()
    rand = grow_groups_random(mask, 3, (2, 3), gen(5))
    assert torch.equal(rand, grow_groups_random(mask, 3, (2, 3), gen(5)))
    assert int(units.units(rand).sum()) == 11  # whole tiles: units() accepts it


def test_units_of_a_ragged_grid_have_sizes_and_reject_partial_tiles():
    units = Units((5, 2, 3, 3), (4, 4))  # matrix 5 x 18: tiles 2 x 5, ragged edges
    assert units.sizes.reshape(2, 5).tolist() == [[16, 16, 16, 16, 8], [4, 4, 4, 4, 2]]
    full = torch.ones(5, 2, 3, 3, dtype=torch.bool)
    assert units.nonzeros(units.units(full)) == 90
    assert torch.equal(units.expand(units.units(full)), full)
    partial = full.clone()
    partial[0, 0, 0, 0] = False
    with pytest.raises(ValueError, match="not made of whole 4x4 tiles"):
        units.units(partial)


def test_erk_densities_meet_the_budget_and_favour_small_layers():
    shapes = {"conv": (16, 1, 3, 3), "mid": (32, 16, 3, 3), "fc": (10, 1568)}
    dens = erk_densities(shapes, 0.6)
    numel = {n: math.prod(s) for n, s in shapes.items()}
    kept = sum(dens[n] * numel[n] for n in shapes)
    assert kept == pytest.approx(0.6 * sum(numel.values()))
    assert dens["conv"] == 1.0  # raw density would exceed 1: made dense, the rest rescaled
    raw = {n: sum(s) / numel[n] for n, s in shapes.items()}
    assert dens["mid"] / dens["fc"] == pytest.approx(raw["mid"] / raw["fc"])
    fixed = erk_densities(shapes, 0.6, {"fc": 0.5})
    assert fixed["fc"] == 0.5
    assert sum(fixed[n] * numel[n] for n in shapes) == pytest.approx(0.6 * sum(numel.values()))
    with pytest.raises(ValueError, match="overrides keep more weights"):
        erk_densities(shapes, 0.6, {"fc": 0.0})
