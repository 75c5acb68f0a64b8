"""prune_channels: targets, ranking, rounding, plans that replay on a fresh model."""

import copy

import pytest
import torch
from torch import nn

from sparseforge.graph import (
    IMPORTANCE,
    PrunePlan,
    apply_plan,
    channel_mask,
    dependency_graph,
    prune_channels,
    select_units,
    unit_scores,
)
from sparseforge.models.resnet import resnet, resnet20
from sparseforge.profile.flops import count_flops

X = torch.randn(2, 1, 28, 28)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = resnet20(num_classes=10, in_channels=1).eval()
    with torch.no_grad():  # trained-looking BN statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.2, 1.5)
    return m


def conv_widths(m):
    return [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]


def test_ratio_removes_that_share_of_every_group(model):
    small, plan = prune_channels(model, X, ratio=0.5)
    assert conv_widths(small)[:3] == [8, 8, 8]  # stage 1: 16 -> 8, stage 2: 32 -> 16 ...
    assert max(conv_widths(small)) == 32
    assert small.fc.out_features == 10
    assert plan.flops[1] < 0.35 * plan.flops[0] and plan.params[1] < plan.params[0]
    assert small(X).shape == (2, 10)


def test_flops_target_is_reached_with_the_smallest_ratio(model):
    small, plan = prune_channels(model, X, flops=0.5)
    reduction = 1 - plan.flops[1] / plan.flops[0]
    assert reduction >= 0.5
    assert reduction < 0.6  # not wildly past the target
    assert plan.flops[1] == count_flops(small, X).dense_flops


def test_round_to_keeps_multiples(model):
    small, _ = prune_channels(model, X, ratio=0.3, round_to=8)
    assert all(w % 8 == 0 for w in conv_widths(small))


def test_global_scope_ranks_across_groups_and_respects_max_ratio(model):
    graph = dependency_graph(model, X)
    scores = unit_scores(model, graph, "l1")
    removed = set(select_units(graph, scores, 0.6, scope="global", max_ratio=0.7))
    per_group = [len(set(g.units) & removed) / len(g.units) for g in graph.groups]
    assert max(per_group) <= 0.7 and len(set(per_group)) > 1  # uneven: ranked globally
    all_units = sum(len(g.units) for g in graph.groups)
    assert len(removed) == pytest.approx(0.6 * all_units, abs=2)


@pytest.mark.parametrize("importance", [n for n in IMPORTANCE.names() if n != "taylor"])
def test_every_importance_prunes_the_lowest_units(model, importance):
    graph = dependency_graph(model, X)
    scores = unit_scores(model, graph, importance)
    assert set(scores) == set(graph.units) and len(set(scores.values())) > 1
    removed = select_units(graph, scores, 0.25)
    for g in graph.groups:
        gone = [u for u in g.units if u in removed]
        kept = [u for u in g.units if u not in removed]
        assert max(scores[u] for u in gone) <= min(scores[u] for u in kept)


def test_l1_prefers_a_zeroed_filter(model):
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.layer1[0].conv1.weight[3].zero_()
        m.layer1[0].bn1.weight[3] = 0.0
    small, plan = prune_channels(m, X, ratio=1 / 16, importance="l1")
    kept = dict(((n, d), v) for (n, d), v in plan.kept.items())
    assert 3 not in kept[("layer1.0.conv1.weight", 0)]


def test_taylor_needs_gradients_then_works(model):
    m = copy.deepcopy(model)
    with pytest.raises(ValueError, match="backward"):
        prune_channels(m, X, ratio=0.25, importance="taylor")
    m.train()
    nn.functional.cross_entropy(m(X), torch.tensor([1, 2])).backward()
    small, _ = prune_channels(m.eval(), X, ratio=0.25, importance="taylor")
    assert small(X).shape == (2, 10)


def test_plan_round_trips_and_replays_on_a_fresh_model(model, tmp_path):
    small, plan = prune_channels(model, X, flops=0.4)
    path = plan.save(tmp_path / "plan.json")
    loaded = PrunePlan.load(path)
    assert loaded.kept == plan.kept and loaded.flops == plan.flops
    fresh = apply_plan(resnet20(num_classes=10, in_channels=1), loaded)
    fresh.load_state_dict(small.state_dict())  # same shapes, every key
    torch.testing.assert_close(fresh.eval()(X), small(X))


def test_pruned_model_equals_the_channel_masked_model(model):
    small, plan = prune_channels(model, X, ratio=0.4)
    masked = copy.deepcopy(model)
    channel_mask(masked, {k: torch.tensor(v) for k, v in plan.kept.items()})
    torch.testing.assert_close(small(X), masked(X), rtol=1e-4, atol=1e-5)


def test_plan_for_another_model_is_refused(model):
    _, plan = prune_channels(model, X, ratio=0.3)
    with pytest.raises(ValueError, match="does not fit"):
        apply_plan(resnet(num_classes=10, in_channels=1, depth=8), plan)


@pytest.mark.parametrize("kwargs,match", [
    ({}, "exactly one"), ({"ratio": 0.3, "flops": 0.3}, "exactly one"),
    ({"flops": 1.5}, r"\(0, 1\)"), ({"speedup": 0.5}, "> 1"), ({"flops": 0.99}, "out of reach"),
])
def test_bad_targets_say_what_to_do(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune_channels(model, X, **kwargs)


def test_speedup_target_is_measured():
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(256, 2048), nn.ReLU(), nn.Linear(2048, 256)).eval()
    small, plan = prune_channels(wide, torch.randn(64, 256), speedup=1.5)
    assert small[0].out_features < 2048


def test_per_module_limits_cap_their_groups(model):
    small, _ = prune_channels(model, X, ratio=0.5, limits={"layer2": 0.25})
    widths = conv_widths(small)
    assert widths[0] == 8  # stage 1: the ratio
    stage2 = [c.out_channels for n, c in small.named_modules()
              if isinstance(c, nn.Conv2d) and n.startswith("layer2")]
    assert min(stage2) == 24  # 32 * (1 - 0.25): the cap, not 16
    with pytest.raises(ValueError, match="limit"):
        prune_channels(model, X, ratio=0.5, limits={"layer2": 1.5})


def test_latency_scope_cuts_where_the_measured_time_goes(model, fake_clock):
    # only full-resolution (28x28, stage 1) convolutions cost time on this fake machine
    fake_clock(lambda conv, y: float(y.shape[1]) if y.shape[-1] == 28 else 0.0)
    small, plan = prune_channels(model, X, flops=0.3, scope="latency", max_ratio=0.5, round_to=4)
    assert 1 - plan.flops[1] / plan.flops[0] >= 0.3
    widths = {n: c.out_channels for n, c in small.named_modules() if isinstance(c, nn.Conv2d)}
    assert widths["conv1"] == 8 and widths["layer1.0.conv1"] == 8  # stage 1 first, to its cap
    assert all(w % 4 == 0 for w in widths.values())
    uniform, _ = prune_channels(model, X, flops=0.3)
    assert max(conv_widths(small)) > max(conv_widths(uniform))  # stage 3 spared for it
    small.eval()
    assert small(X).shape == (2, 10)


def test_latency_scope_needs_a_flops_or_speedup_target(model):
    with pytest.raises(ValueError, match="not ratio"):
        prune_channels(model, X, ratio=0.5, scope="latency")
    with pytest.raises(ValueError, match="scope must be one of"):
        prune_channels(model, X, ratio=0.5, scope="stage")


def test_latency_scope_out_of_reach_says_so(model, fake_clock):
    fake_clock(lambda conv, y: float(y.shape[1]))
    with pytest.raises(ValueError, match="out of reach"):
        prune_channels(model, X, flops=0.9, scope="latency", max_ratio=0.1)
