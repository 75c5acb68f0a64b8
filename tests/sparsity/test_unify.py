import copy
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.sparsity import bake_masks, get_mask, load_masked_state_dict
from sparseforge.sparsity.schemes import as_matrix
from sparseforge.sparsity.unify import (
    KEEP,
    PRUNE,
    UNIFY,
    UnifiedMask,
    apply_unified,
    block_errors,
    budget,
    choose_kinds,
    get_unified,
    project_unify,
    shared_values,
)


def blocks_of(mat, bh, bw):
    """(row, col, tile) for every bh x bw tile of a matrix, ragged edges included."""
    for i in range(0, mat.shape[0], bh):
        for j in range(0, mat.shape[1], bw):
            yield i // bh, j // bw, mat[i : i + bh, j : j + bw]


def test_mean_magnitude_minimises_the_error_for_fixed_signs():
    w = torch.tensor([[0.3, -1.2, 0.0, 2.5]])
    prune_err, unify_err, m = block_errors(w, (1, 4))
    assert m.item() == pytest.approx(1.0)  # mean |w|
    assert prune_err.item() == pytest.approx((w**2).sum().item())
    signs = torch.tensor([1.0, -1.0, 1.0, 1.0])  # sign(0) counts as +

    def err(mag):
        return ((signs * mag - w) ** 2).sum().item()

    assert unify_err.item() == pytest.approx(err(1.0))
    assert all(err(1.0) < err(1.0 + d) for d in (-0.1, -0.01, 0.01, 0.1))


def test_the_error_minimising_choice_on_a_hand_made_matrix():
    # blocks (1x2): A uniform small, B lopsided small, C large. Pruning the smallest block (A)
    # first would cost 0.5 + 0.405; pruning B and unifying A costs 0.81 + 0.
    w = torch.tensor([[0.5, 0.5, 0.9, 0.0, 4.0, 1.0]])
    r = project_unify(w, (1, 2), prune=1 / 3, unify=1 / 3)
    assert r.kinds.flatten().tolist() == [UNIFY, PRUNE, KEEP]
    assert torch.equal(r.values, torch.tensor([[0.5, 0.5, 0.0, 0.0, 4.0, 1.0]]))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 7), seed=st.integers(0, 10_000), data=st.data())
def test_choose_kinds_matches_brute_force(n, seed, data):
    g = torch.Generator().manual_seed(seed)
    b = torch.rand(n, generator=g)
    a = b * torch.rand(n, generator=g)  # unifying never costs more than pruning
    n_prune = data.draw(st.integers(0, n))
    n_unify = data.draw(st.integers(0, n - n_prune))
    kinds = choose_kinds(b, a, n_prune, n_unify)
    assert (kinds == PRUNE).sum() == n_prune and (kinds == UNIFY).sum() == n_unify
    cost = (b * (kinds == PRUNE) + a * (kinds == UNIFY)).sum().item()
    best = min(
        sum(b[i] if k == PRUNE else a[i] if k == UNIFY else 0.0 for i, k in enumerate(ks))
        for ks in itertools.product((KEEP, UNIFY, PRUNE), repeat=n)
        if ks.count(PRUNE) == n_prune and ks.count(UNIFY) == n_unify
    )
    assert cost == pytest.approx(float(best), abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.sampled_from([(7, 13), (8, 4, 3, 3), (16, 32)]),
    block=st.sampled_from([(1, 4), (2, 2), (3, 5)]),
    prune=st.floats(0.0, 0.7),
    unify=st.floats(0.0, 0.3),
)
def test_projection_budget_and_block_contents(shape, block, prune, unify):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    r = project_unify(w, block, prune, unify)
    n_prune, n_unify = budget(r.kinds.numel(), prune, unify)
    assert (r.kinds == PRUNE).sum() == n_prune and (r.kinds == UNIFY).sum() == n_unify
    orig, out = as_matrix(w), as_matrix(r.values)
    for (i, j, tile), (_, _, src) in zip(blocks_of(out, *block), blocks_of(orig, *block), strict=True):
        kind = r.kinds[i, j].item()
        if kind == KEEP:
            assert torch.equal(tile, src)
        elif kind == PRUNE:
            assert torch.all(tile == 0)
        else:
            assert torch.unique(tile.abs()).numel() == 1  # one magnitude, exactly
            assert tile.abs()[0, 0] == pytest.approx(src.abs().mean().item(), rel=1e-5)
            assert torch.all((tile >= 0) == (src >= 0))  # signs kept


def unified_linear(seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(8, 6)
    r = project_unify(layer.weight, (2, 2), prune=0.25, unify=0.5)
    apply_unified(layer, r.kinds, r.sign, (2, 2))
    return layer, r


def test_unified_layer_holds_one_value_per_block_and_learns_it():
    layer, r = unified_linear()
    assert torch.allclose(layer.weight.detach(), r.values, rtol=1e-6, atol=0)
    kinds, mags = shared_values(layer)
    rebuilt = r.values.clone()  # kept blocks as they are, pruned blocks zero
    for i, j, tile in blocks_of(rebuilt, 2, 2):
        if kinds[i, j] == UNIFY:
            tile.copy_(r.sign[2 * i : 2 * i + 2, 2 * j : 2 * j + 2] * mags[i, j])
    assert torch.equal(rebuilt, layer.weight.detach())

    x = torch.randn(5, 8)
    layer(x).pow(2).sum().backward()
    grad = layer.parametrizations.weight.original.grad
    weight_grad = 2 * (layer(x).detach()).T @ x  # dL/dW for L = sum((xW^T + b)^2)
    for i, j, tile in blocks_of(grad, 2, 2):
        s = r.sign[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].float()
        g = weight_grad[2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
        if kinds[i, j] == UNIFY:  # every weight gets the block's mean signed gradient
            assert torch.allclose(tile, s * (s * g).mean(), atol=1e-5) and tile.abs().sum() > 0
        elif kinds[i, j] == PRUNE:
            assert torch.all(tile == 0)
    before = mags[kinds == UNIFY].clone()
    with torch.no_grad():
        layer.parametrizations.weight.original.sub_(0.1 * grad)
    _, after = shared_values(layer)
    assert not torch.allclose(after[kinds == UNIFY], before)  # the shared value is learned
    for i, j, tile in blocks_of(layer.weight.detach(), 2, 2):
        if kinds[i, j] == UNIFY:
            assert torch.unique(tile.abs()).numel() == 1


def test_state_dict_loads_into_a_plain_masked_layer_and_bakes():
    layer, r = unified_linear(1)
    state = nn.Sequential(layer).state_dict()
    assert set(state) == {"0.bias", "0.parametrizations.weight.original", "0.parametrizations.weight.0.mask"}
    fresh = nn.Sequential(nn.Linear(8, 6))
    load_masked_state_dict(fresh, state)
    kept = r.kinds.ne(PRUNE).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert get_unified(fresh[0]) is None and torch.equal(get_mask(fresh[0]), kept)
    assert torch.equal(fresh[0].weight, layer.weight)  # the stored weight holds +-m already
    baked = bake_masks(copy.deepcopy(layer))
    assert torch.equal(baked.weight, layer.weight) and isinstance(layer.parametrizations.weight[0], UnifiedMask)


def test_channels_last_conv_weight_keeps_its_layout_and_values():
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 3)
    r = project_unify(conv.weight, (1, 4), prune=0.3, unify=0.3)
    apply_unified(conv, r.kinds, r.sign, (1, 4))
    conv.to(memory_format=torch.channels_last)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(conv.weight, r.values, rtol=1e-6, atol=1e-7)


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="cannot prune 3 and unify 2 of 4"):
        choose_kinds(torch.ones(4), torch.ones(4), 3, 2)
    with pytest.raises(ValueError, match="not unified"):
        shared_values(nn.Linear(2, 2))
