import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import nn

from sparseforge.sparsity import PruningSpec, get_mask, prune
from sparseforge.sparsity.patterns import (
    ALL_PATTERNS,
    CENTRE,
    DEFAULT_LIBRARY,
    derive_library,
    kernel_patterns,
    kernels_to_remove,
    pattern,
)


def scores_for(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_default_library_is_eight_distinct_four_of_nine_shapes_keeping_the_centre():
    assert len(DEFAULT_LIBRARY) == len(set(DEFAULT_LIBRARY)) == 8
    assert all(len(set(p)) == 4 and CENTRE in p and set(p) <= set(range(9)) for p in DEFAULT_LIBRARY)
    assert len(ALL_PATTERNS) == 56 and set(DEFAULT_LIBRARY) <= set(ALL_PATTERNS)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.sampled_from([(4, 3, 3, 3), (8, 1, 3, 3), (6, 5, 3, 3)]),
    connectivity=st.sampled_from([None, 0.0, 0.25, 0.6]),
    s=st.floats(0.56, 0.99),
    seed=st.integers(0, 1000),
)
def test_every_kernel_is_a_library_pattern_or_empty_and_sparsity_adds_up(shape, connectivity, s, seed):
    sc = scores_for(shape, seed)
    mask = pattern(sc, s, connectivity=connectivity)
    ids = kernel_patterns(mask, DEFAULT_LIBRARY)
    assert mask.shape == sc.shape and torch.all(ids >= -1)  # no kernel outside the library
    n = ids.numel()
    removed = kernels_to_remove(n, s, connectivity)
    assert (ids == -1).sum().item() == removed
    assert (~mask).sum().item() == 5 * n + 4 * removed  # 5 of 9 per kernel, 9 per removed kernel
    if connectivity is None:  # the target is met to within half a kernel
        zeros = (~mask).sum().item() / mask.numel()  # exact: a float32 mean rounds past 1e-9
        assert abs(zeros - s) <= 2 / (9 * n) + 1e-9
    else:
        assert removed == round(connectivity * n)


def test_chosen_pattern_maximises_the_kept_score_brute_force():
    sc = scores_for((16, 8, 3, 3), seed=3)
    mask = pattern(sc, 5 / 9)
    for kernel, kept in zip(sc.reshape(-1, 9).tolist(), mask.reshape(-1, 9).tolist(), strict=True):
        best = max(sum(kernel[i] for i in p) for p in DEFAULT_LIBRARY)
        assert sum(k for k, keep in zip(kernel, kept, strict=True) if keep) == pytest.approx(best, abs=1e-6)
        assert tuple(i for i in range(9) if kept[i]) in DEFAULT_LIBRARY


def test_connectivity_removes_the_kernels_with_the_smallest_kept_score():
    sc = scores_for((12, 10, 3, 3), seed=5)
    patterned = pattern(sc, 5 / 9)
    mask = pattern(sc, 0.8)
    kept_score = (sc * patterned).reshape(-1, 9).sum(1)
    empty = ~mask.reshape(-1, 9).any(1)
    assert empty.any() and kept_score[~empty].min() >= kept_score[empty].max()
    assert torch.equal(mask.reshape(-1, 9)[~empty], patterned.reshape(-1, 9)[~empty])


def test_zero_target_keeps_everything_and_other_shapes_are_refused_by_name():
    assert pattern(scores_for((8, 16)), 0.0).all()
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"module '2' \(Linear\): the pattern scheme needs 3x3.*exclude"):
        prune(model, "pattern", 0.6)
    prune(model, "pattern", 0.6, layers={"exclude": ["2"]})
    assert torch.all(kernel_patterns(get_mask(model[0]), DEFAULT_LIBRARY) >= -1)


def test_derived_library_ranks_kernel_shapes_by_frequency():
    planted = {(0, 1, 2, 4): 10, (4, 6, 7, 8): 5, (2, 4, 5, 8): 1}
    rows = []
    for p, count in planted.items():
        k = torch.full((9,), 0.1)
        k[list(p)] = torch.tensor([1.0, 2.0, 3.0, 4.0])
        rows += [k] * count
    weight = torch.stack(rows).reshape(len(rows), 1, 3, 3)
    assert derive_library([weight], 2) == [(0, 1, 2, 4), (4, 6, 7, 8)]
    topped_up = derive_library([weight], 4)
    assert topped_up[:3] == list(planted) and topped_up[3] == DEFAULT_LIBRARY[0]
    model = nn.Sequential(nn.Conv2d(1, len(rows), 3), nn.Conv2d(len(rows), 4, 1), nn.Flatten())
    with torch.no_grad():
        model[0].weight.copy_(weight)
    assert derive_library(model, 3) == list(planted)  # the 1x1 conv is skipped


def test_a_derived_library_scheme_uses_only_its_patterns():
    sc = scores_for((8, 8, 3, 3), seed=9)
    mask = pattern(sc, 5 / 9, library="derive", library_size=2)
    library = derive_library([sc], 2)
    ids = kernel_patterns(mask, library)
    assert torch.all(ids >= 0) and set(ids.tolist()) <= {0, 1}


@pytest.mark.parametrize(
    "library, message",
    [([[0, 1, 2, 3]], "including the centre"), ([[0, 1, 4, 4]], "4 distinct"),
     ([[0, 1, 3, 4], [4, 3, 1, 0]], "appears twice"), ([], "empty")],
)
def test_bad_libraries_are_refused(library, message):
    with pytest.raises(ValidationError, match=message):
        PruningSpec(scheme={"name": "pattern", "library": library})


def test_explicit_library_through_prune():
    model = nn.Sequential(nn.Conv2d(3, 6, 3))
    lib = [[4, 1, 3, 0], [4, 5, 7, 8]]
    spec_lib = [tuple(sorted(p)) for p in lib]
    prune(model, {"name": "pattern", "library": lib, "connectivity": 0.5}, 0.5)
    ids = kernel_patterns(get_mask(model[0]), spec_lib)  # the spec stores patterns sorted
    assert set(ids.tolist()) <= {-1, 0, 1} and (ids == -1).sum().item() == 9  # 18 kernels, half
