import copy
import io

import pytest
import torch
from torch import nn

from sparseforge.sparsity import (
    apply_mask,
    bake_masks,
    get_mask,
    global_sparsity,
    layer_sparsity,
    load_masked_state_dict,
    masked_modules,
    prune,
)


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


@pytest.mark.parametrize(
    "optimizer", [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-2),
    ],
)
def test_masked_weights_stay_exactly_zero_after_optimizer_steps(optimizer):
    model = small_net()
    opt = optimizer(model.parameters())
    for _ in range(2):  # some momentum before pruning, so stale state could leak
        model(torch.randn(4, 3, 8, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    prune(model, "unstructured", 0.8)
    masks = {n: get_mask(m).clone() for n, m in masked_modules(model)}
    for _ in range(5):
        model(torch.randn(4, 3, 8, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    for n, m in masked_modules(model):
        assert torch.all(m.weight[~masks[n]] == 0)
        assert torch.count_nonzero(m.weight[masks[n]]) > 0  # the kept weights still train


def test_optimizer_keeps_updating_the_same_parameters_after_masking():
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prune(model, "unstructured", 0.5)
    in_optimizer = {id(p) for group in opt.param_groups for p in group["params"]}
    assert {id(p) for p in model.parameters()} == in_optimizer


def test_state_dict_round_trip_restores_masks_into_a_fresh_model():
    model = small_net()
    prune(model, {"name": "block", "block": [2, 2]}, 0.6)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = small_net()
    load_masked_state_dict(fresh, state)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), fresh(x))
    assert layer_sparsity(fresh) == layer_sparsity(model)


def test_bake_leaves_plain_parameters_with_the_zeros():
    model = small_net()
    prune(model, "unstructured", 0.7)
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    bake_masks(model)
    assert not list(masked_modules(model))
    assert set(model.state_dict()) == set(small_net().state_dict())
    assert torch.equal(model(x), expected)
    assert abs(1 - torch.count_nonzero(model[0].weight).item() / model[0].weight.numel() - 0.7) < 0.01


def test_baking_a_copy_leaves_the_original_masked():
    model = small_net()
    prune(model, "unstructured", 0.7)
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    baked = bake_masks(copy.deepcopy(model))
    assert not list(masked_modules(baked)) and len(list(masked_modules(model))) == 2
    assert torch.equal(model(x), expected) and torch.equal(baked(x), expected)
    bake_masks(model)  # and the original still bakes
    assert torch.equal(model(x), expected)


def test_global_allocation_matches_global_magnitude_threshold():
    model = small_net()
    prune(model, "unstructured", 0.5, allocation="global", max_layer_sparsity=1.0)
    assert abs(global_sparsity(model) - 0.5) < 1e-3
    surviving = torch.cat([m.weight[m.weight != 0].abs() for _, m in masked_modules(model)])
    pruned_orig = []
    ref = small_net()
    for n, m in masked_modules(model):
        pruned_orig.append(dict(ref.named_modules())[n].weight[get_mask(m) == 0].abs())
    assert surviving.min() >= torch.cat(pruned_orig).max()


def test_layer_selection_overrides_and_errors():
    model = small_net()
    result = prune(model, "unstructured", 0.9, layers={"include": ["*"], "types": ["Linear"]})
    assert list(result) == ["3"]
    model = small_net()
    result = prune(model, "unstructured", 0.9, overrides=[{"layers": "0", "sparsity": 0.25}])
    assert abs(result["0"] - 0.25) < 0.01 and abs(result["3"] - 0.9) < 0.01
    with pytest.raises(ValueError, match="matched no module"):
        prune(small_net(), "unstructured", 0.5, layers="classifier.*")
    with pytest.raises(ValueError, match=r"module '0' \(Conv2d\).*not divisible"):
        prune(small_net(), "2:4", 0.5)  # the conv has 3 input channels


def test_selection_by_type_sees_through_masks():
    model = small_net()
    prune(model, "unstructured", 0.5)
    assert type(model[0]).__name__ == "ParametrizedConv2d"
    result = prune(model, "unstructured", 0.8, layers={"types": ["Conv2d"]})
    assert list(result) == ["0"] and abs(result["0"] - 0.8) < 0.01


def test_regex_layer_patterns():
    result = prune(small_net(), "unstructured", 0.5, layers="re:[0-9]+")
    assert set(result) == {"0", "3"}


def test_apply_mask_checks_shape():
    with pytest.raises(ValueError, match="mask shape"):
        apply_mask(nn.Linear(4, 4), torch.ones(3, 4, dtype=torch.bool))
