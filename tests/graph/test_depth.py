"""Depth pruning: which residual branches are droppable, the dropped model equals the model whose
branch weights are zero, and plans with dropped branches replay on a fresh model."""

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from sparseforge.graph import PrunePlan, apply_plan, prune_channels
from sparseforge.graph.depth import drop_branches, residual_branches
from sparseforge.models.resnet import resnet20
from sparseforge.recipe import StructuredConfig

X = torch.randn(3, 1, 28, 28)


def trained_looking(m: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and shifts, so a dropped branch leaves a non-zero constant."""
    torch.manual_seed(0)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.2, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m.eval()


def zero_weights(model: nn.Module, branches) -> nn.Module:
    """The reference: the same model with every conv/linear weight of the branches zeroed."""
    ref = copy.deepcopy(model)
    for b in branches:
        for child in b.children:
            mod = ref.get_submodule(f"{b.module}.{child}" if b.module else child)
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                with torch.no_grad():
                    mod.weight.zero_()
    return ref


class PreNormMLP(nn.Module):
    """A transformer-style residual: x + fc2(gelu(fc1(ln(x)))), tokens last."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.ln, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln(x))))


class Leaky(nn.Module):
    """Not droppable: the branch's intermediate is also returned."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        h = self.conv(x)
        return x + h, h


class TwoInputs(nn.Module):
    """Not a residual: the operands share no input."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


def test_resnet20_offers_every_block_including_downsampling_ones():
    branches = residual_branches(resnet20(num_classes=10, in_channels=1))
    assert [b.module for b in branches] == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    assert all(b.children == ("bn1", "bn2", "conv1", "conv2", "relu1") for b in branches)
    assert branches[0].owns("layer1.0.conv1.weight") and not branches[0].owns("layer1.0.shortcut.0.weight")


@pytest.mark.parametrize("pick", [[0], [1, 3], [0, 4, 8]])
def test_dropped_resnet20_equals_the_zero_weight_model(pick):
    model = trained_looking(resnet20(num_classes=10, in_channels=1))
    branches = [residual_branches(model)[i] for i in pick]
    dropped = drop_branches(copy.deepcopy(model), branches, X[:1])
    with torch.no_grad():
        torch.testing.assert_close(dropped(X), zero_weights(model, branches)(X))
    for b in branches:  # the conv layers are gone, a per-channel constant is left
        block = dropped.get_submodule(b.module)
        assert not hasattr(block, "conv1") and getattr(block, f"const_{b.add}").shape[:2] == (1, block_width(model, b))


def block_width(model, b):
    return model.get_submodule(f"{b.module}.conv2").out_channels


def test_torchvision_resnet18_and_a_transformer_residual():
    model = trained_looking(resnet18(num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    branches = residual_branches(model)
    assert len(branches) == 8
    chosen = [branches[1], branches[6]]
    dropped = drop_branches(copy.deepcopy(model), chosen, x[:1])
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), zero_weights(model, chosen)(x))

    torch.manual_seed(1)
    mlp = PreNormMLP().eval()
    tokens = torch.randn(2, 5, 8)
    (branch,) = residual_branches(mlp)
    assert branch.module == "" and branch.children == ("fc1", "fc2", "ln")
    out = drop_branches(copy.deepcopy(mlp), [branch], tokens[:1])
    torch.testing.assert_close(out(tokens), tokens + mlp.fc2.bias)  # fc1 off: fc2 leaves its bias
    assert getattr(out, f"const_{branch.add}").shape == (1, 1, 8)


def test_leaky_or_unrelated_adds_are_not_branches():
    assert residual_branches(Leaky()) == []
    assert residual_branches(TwoInputs()) == []


def test_depth_plan_replays_and_trains(fake_clock):
    model = trained_looking(resnet20(num_classes=10, in_channels=1))
    # on this fake machine only the 28x28 convs cost time: stage 1 goes, as whole blocks or not
    fake_clock(lambda conv, y: float(y.shape[1]) if y.shape[-1] == 28 else 0.0)
    small, plan = prune_channels(model, X[:1], flops=0.3, scope="latency", depth=True,
                                 max_ratio=0.5, round_to=4)
    assert plan.dropped and all(d["module"].startswith("layer1.") for d in plan.dropped)
    assert 0.3 <= 1 - plan.flops[1] / plan.flops[0] < 0.4  # the finishing move does not overshoot
    assert "dropped residual branch layer1." in plan.summary()

    fresh = apply_plan(resnet20(num_classes=10, in_channels=1), PrunePlan.from_dict(plan.to_dict()))
    state = small.state_dict()
    assert any(k.endswith(".const_add") for k in state)
    fresh.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(X), small(X))

    small.train()  # the constants train with the rest
    small(X).sum().backward()
    consts = [p for n, p in small.named_parameters() if n.endswith("const_add")]
    assert consts and all(p.grad is not None and p.grad.abs().sum() > 0 for p in consts)


def test_depth_needs_the_latency_scope():
    model = resnet20(num_classes=10, in_channels=1).eval()
    with pytest.raises(ValueError, match="depth: true needs scope 'latency'"):
        prune_channels(model, X[:1], flops=0.3, depth=True)
    with pytest.raises(ValueError, match="depth: true needs scope: latency"):
        StructuredConfig(flops=0.3, depth=True)
