import copy
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from sparseforge.graph.fusion import (
    FusionResult,
    fold_affine,
    fold_batchnorm,
    fold_padding,
    fuse,
    remove_identity,
)
from sparseforge.models.resnet import resnet20

_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so a fold that drops any of them
    changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BNS):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.randn(c, generator=g))
                    m.bias.copy_(torch.randn(c, generator=g))
    return model


def check(model: nn.Module, x: torch.Tensor, atol: float = 1e-5, **switches) -> FusionResult:
    """Fuse the eval-mode model and assert the output is unchanged."""
    model.eval()
    result = fuse(model, **switches)
    with torch.no_grad():
        torch.testing.assert_close(result.module(x), model(x), rtol=1e-5, atol=atol)
    return result


def called(gm: fx.GraphModule, kind: type) -> list[str]:
    """Targets of the call_module nodes that call a `kind` module."""
    return [
        n.target for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), kind)
    ]


def functions(gm: fx.GraphModule) -> set:
    return {n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")}


class Pair(nn.Sequential):
    """Two layers in a row, named by role (conv/linear, bn, pad, ...) for readable asserts."""

    def __init__(self, **layers: nn.Module) -> None:
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)


# -- BatchNorm ------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 8])  # 8 = depthwise
def test_conv_bn_folded(bias, groups):
    torch.manual_seed(0)
    model = randomize_bn(Pair(conv=nn.Conv2d(8, 16, 3, padding=1, groups=groups, bias=bias),
                              bn=nn.BatchNorm2d(16)))
    result = check(model, torch.randn(2, 8, 9, 9))
    assert called(result.module, nn.BatchNorm2d) == []
    assert result.fused == ["bn: bn folded into conv"]
    assert result.module.conv.bias is not None
    assert (model.conv.bias is not None) == bias  # the input model keeps its own layers


@pytest.mark.parametrize(
    "layer, bn, shape",
    [
        (nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6), (3, 4, 10)),
        (nn.Conv3d(4, 6, 3, groups=2), nn.BatchNorm3d(6), (2, 4, 5, 5, 5)),
        (nn.Linear(5, 7), nn.BatchNorm1d(7), (4, 5)),
        (nn.Linear(5, 7, bias=False), nn.BatchNorm1d(7, affine=False), (4, 5)),
    ],
)
def test_other_layer_bn_folded(layer, bn, shape):
    torch.manual_seed(0)
    result = check(randomize_bn(Pair(layer=layer, bn=bn)), torch.randn(shape))
    assert called(result.module, _BNS) == []
    assert result.fused == ["bn: bn folded into layer"]


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_bn_before_unpadded_conv_folded(groups):
    torch.manual_seed(0)
    model = randomize_bn(Pair(bn=nn.BatchNorm2d(6), conv=nn.Conv2d(6, 12, 3, groups=groups)))
    result = check(model, torch.randn(2, 6, 8, 8))
    assert called(result.module, nn.BatchNorm2d) == []
    assert result.fused == ["bn: bn folded into conv (input side)"]


def test_bn_before_padded_conv_not_folded():
    torch.manual_seed(0)
    model = randomize_bn(Pair(bn=nn.BatchNorm2d(6), conv=nn.Conv2d(6, 12, 3, padding=1)))
    result = check(model, torch.randn(2, 6, 8, 8))
    assert called(result.module, nn.BatchNorm2d) == ["bn"]
    assert result.fused == []


def test_bn_before_reflect_padded_conv_folded():
    """Reflect padding copies the normalized values, so the affine map commutes with it."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 12, 3, padding=1, padding_mode="reflect")
    result = check(randomize_bn(Pair(bn=nn.BatchNorm2d(6), conv=conv)), torch.randn(2, 6, 8, 8))
    assert called(result.module, nn.BatchNorm2d) == []


def test_bn_before_linear_folded():
    torch.manual_seed(0)
    model = randomize_bn(Pair(bn=nn.BatchNorm1d(5), linear=nn.Linear(5, 3, bias=False)))
    result = check(model, torch.randn(4, 5))
    assert called(result.module, nn.BatchNorm1d) == []
    assert result.fused == ["bn: bn folded into linear (input side)"]


class SharedOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_bn_whose_input_has_two_users_not_folded():
    torch.manual_seed(0)
    result = check(randomize_bn(SharedOutput()), torch.randn(2, 3, 8, 8))
    assert called(result.module, nn.BatchNorm2d) == ["bn"]
    assert result.fused == []


class ConvTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.conv(self.bn(self.conv(x)))


def test_layer_called_twice_not_folded():
    torch.manual_seed(0)
    result = check(randomize_bn(ConvTwice()), torch.randn(2, 4, 5, 5))
    assert called(result.module, nn.BatchNorm2d) == ["bn"]


class FunctionalBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("mean", torch.randn(4))
        self.register_buffer("var", torch.rand(4) + 0.5)
        self.gamma = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return F.batch_norm(self.conv(x), self.mean, self.var, self.gamma, training=self.training)


def test_functional_batch_norm_folded():
    torch.manual_seed(0)
    result = check(FunctionalBN(), torch.randn(2, 3, 6, 6))
    assert F.batch_norm not in functions(result.module)
    assert result.fused == ["bn: batch_norm folded into conv"]


def test_training_bn_raises_naming_it():
    model = Pair(conv=nn.Conv2d(3, 4, 3), bn=nn.BatchNorm2d(4)).train()
    with pytest.raises(ValueError, match="'bn'.*training mode.*eval"):
        fuse(model)
    gm = fx.symbolic_trace(model)
    with pytest.raises(ValueError, match="'bn'"):
        fold_batchnorm(gm)
    assert called(gm, nn.BatchNorm2d) == ["bn"]  # refused before changing anything


# -- padding --------------------------------------------------------------------------------


class FunctionalPad(nn.Module):
    def __init__(self, pad) -> None:
        super().__init__()
        self.pad, self.conv = pad, nn.Conv2d(3, 4, 3, padding=(1, 0))

    def forward(self, x):
        return self.conv(F.pad(x, self.pad, mode="constant", value=0.0))


@pytest.mark.parametrize(
    "model",
    [
        Pair(pad=nn.ZeroPad2d((2, 2, 1, 1)), conv=nn.Conv2d(3, 4, 3, padding=(1, 0))),
        Pair(pad=nn.ConstantPad2d((2, 2, 1, 1), 0.0), conv=nn.Conv2d(3, 4, 3, padding=(1, 0))),
        FunctionalPad((2, 2, 1, 1)),
    ],
    ids=["ZeroPad2d", "ConstantPad2d", "F.pad"],
)
def test_symmetric_zero_pad_folded(model):
    torch.manual_seed(0)
    result = check(model, torch.randn(2, 3, 7, 8))
    gm = result.module
    assert called(gm, nn.ZeroPad2d) + called(gm, nn.ConstantPad2d) == []
    assert F.pad not in functions(gm)
    assert gm.conv.padding == (2, 2)
    assert len(result.fused) == 1 and result.fused[0].startswith("pad: ")
    assert "folded into conv (padding (1, 0) -> (2, 2))" in result.fused[0]


@pytest.mark.parametrize(
    "pad", [nn.ZeroPad2d((1, 0, 1, 0)), nn.ConstantPad2d(1, 0.5)], ids=["asymmetric", "value"]
)
def test_other_pads_left_alone(pad):
    torch.manual_seed(0)
    result = check(Pair(pad=pad, conv=nn.Conv2d(3, 4, 3)), torch.randn(2, 3, 7, 8))
    assert called(result.module, type(pad)) == ["pad"]
    assert result.module.conv.padding == (0, 0)
    assert result.fused == []


# -- scale/shift chains ---------------------------------------------------------------------


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.register_buffer("shift", torch.randn(1, 4, 1, 1))

    def forward(self, x):
        return (self.conv(x) * 2.5 + self.shift) / 4


class MethodChain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 3)
        self.scale = nn.Parameter(torch.randn(3))

    def forward(self, x):
        return 1.5 - self.linear(x).mul(self.scale).sub(torch.tensor(0.25))


def test_affine_chain_folded_into_one_conv():
    torch.manual_seed(0)
    result = check(Chain(), torch.randn(2, 3, 6, 6))
    assert not functions(result.module) & {operator.mul, operator.add, operator.truediv}
    assert result.fused == ["affine: mul 2.5, add shift, div 4 folded into conv"]


def test_affine_methods_and_reversed_sub_folded_into_linear():
    torch.manual_seed(0)
    result = check(MethodChain(), torch.randn(4, 5))
    assert functions(result.module) == set()
    assert len(result.fused) == 1 and result.fused[0].startswith("affine: mul scale, sub ")


class SpatialScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("mask", torch.rand(1, 1, 4, 4))

    def forward(self, x):
        return self.conv(x) * self.mask


def test_per_position_scale_not_folded():
    torch.manual_seed(0)
    result = check(SpatialScale(), torch.randn(2, 3, 6, 6))
    assert operator.mul in functions(result.module)
    assert result.fused == []


# -- identities -----------------------------------------------------------------------------


class Dropouts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.id, self.drop = nn.Conv2d(3, 4, 3), nn.Identity(), nn.Dropout(0.5)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return F.dropout(self.bn(self.drop(self.id(self.conv(x)))), 0.3, training=self.training)


def test_identity_and_eval_dropout_removed_exposing_bn():
    torch.manual_seed(0)
    result = check(randomize_bn(Dropouts()), torch.randn(2, 3, 6, 6))
    gm = result.module
    assert called(gm, (nn.Identity, nn.Dropout, nn.BatchNorm2d)) == []
    assert F.dropout not in functions(gm)
    assert result.fused == [
        "identity: id removed", "identity: drop removed", "identity: dropout removed",
        "bn: bn folded into conv",
    ]


def test_training_dropout_kept():
    gm = fx.symbolic_trace(Pair(conv=nn.Conv2d(3, 4, 3), drop=nn.Dropout(0.5)).train())
    assert remove_identity(gm) == []
    assert called(gm, nn.Dropout) == ["drop"]


# -- switches, errors, input untouched ------------------------------------------------------


class Everything(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.id, self.pad = nn.Identity(), nn.ZeroPad2d(1)
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(self.pad(self.id(x)))))) * 2.0


_KINDS = {
    "identity": lambda gm: called(gm, nn.Identity),
    "pad": lambda gm: called(gm, nn.ZeroPad2d),
    "bn": lambda gm: called(gm, nn.BatchNorm2d),
    "affine": lambda gm: operator.mul in functions(gm),
}


@pytest.mark.parametrize("off", sorted(_KINDS))
def test_switch_off_keeps_its_ops(off):
    torch.manual_seed(0)
    result = check(randomize_bn(Everything()), torch.randn(2, 3, 6, 6), **{off: False})
    for kind, present in _KINDS.items():
        assert bool(present(result.module)) == (kind == off), kind
    assert not any(line.startswith(f"{off}:") for line in result.fused)


def test_passes_run_alone_on_a_graph_module():
    torch.manual_seed(0)
    model = randomize_bn(Everything()).eval()
    gm = fx.symbolic_trace(copy.deepcopy(model))  # a traced module shares the model's layers
    x = torch.randn(2, 3, 6, 6)
    lines = remove_identity(gm) + fold_padding(gm) + fold_batchnorm(gm) + fold_affine(gm)
    assert [line.split(":")[0] for line in lines] == ["identity", "pad", "bn", "affine"]
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
    assert list(dict(gm.named_children())) == ["conv", "head"]  # unused submodules deleted


def test_input_model_untouched_and_graph_module_accepted():
    torch.manual_seed(0)
    model = randomize_bn(Everything()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = fx.symbolic_trace(model)
    assert len(fuse(gm).fused) == 4
    assert len(fuse(model).fused) == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert called(gm, nn.BatchNorm2d) == ["bn"]


class DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_untraceable_model_raises_naming_fx():
    with pytest.raises(ValueError, match="DataDependent.*fx-traceable"):
        fuse(DataDependent())


# -- whole networks -------------------------------------------------------------------------


def _whole_network(model: nn.Module, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    result = check(randomize_bn(model), x, atol=1e-4)
    assert called(result.module, _BNS) == []
    assert not any(isinstance(m, _BNS) for m in result.module.modules())
    n_bn = sum(isinstance(m, _BNS) for m in model.modules())
    assert sum(line.startswith("bn: ") for line in result.fused) == n_bn


def test_resnet20():
    torch.manual_seed(0)
    _whole_network(resnet20(num_classes=10, in_channels=1), torch.randn(2, 1, 28, 28))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision(name):
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    _whole_network(getattr(models, name)(weights=None), torch.randn(2, 3, 64, 64))
