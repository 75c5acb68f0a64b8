"""Each algebraic rewrite changes the graph as intended and leaves the outputs equal on random
inputs."""

import pytest
import torch
from torch import nn

from sparseforge.graph.capture import capture
from sparseforge.graph.fusion import fuse
from sparseforge.graph.rewrite import PASSES, rewrite

aten = torch.ops.aten


def exported(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    return capture(model.eval(), x).program.run_decompositions({}).module()


def targets(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def check(model: nn.Module, x: torch.Tensor, passes: tuple[str, ...]):
    gm = exported(model, x)
    with torch.no_grad():
        before = gm(x)
    done = rewrite(gm, passes)
    with torch.no_grad():
        after = gm(x)
    torch.testing.assert_close(after, before)
    for _ in range(3):  # and on fresh inputs of the same shape
        z = torch.randn_like(x)
        with torch.no_grad():
            torch.testing.assert_close(gm(z), model(z))
    return gm, done


class Permutes(nn.Module):
    def forward(self, x):  # (B, C, H, W)
        y = x.permute(0, 2, 3, 1).permute(0, 3, 1, 2)  # cancels
        z = y.transpose(1, 2).permute(0, 2, 1, 3)  # merges into one permute
        return torch.relu(z) + 1


def test_permutes_cancel_or_merge():
    gm, done = check(Permutes(), torch.randn(2, 3, 4, 5), ("merge_permutes",))
    assert done["merge_permutes"]
    assert targets(gm).count(aten.permute.default) + targets(gm).count(aten.transpose.int) <= 1


class Reshapes(nn.Module):
    def forward(self, x):  # (B, 12)
        return torch.sigmoid(x.view(-1, 3, 4).reshape(-1, 2, 6).view(-1, 12) * 2)


def test_reshape_chains_collapse():
    gm, done = check(Reshapes(), torch.randn(5, 12), ("collapse_reshapes",))
    assert done["collapse_reshapes"]
    assert not any(t in (aten.view.default, aten.reshape.default) for t in targets(gm))


class Scales(nn.Module):
    def forward(self, x):
        return torch.tanh((x * 3.0) * 0.5 * 2.0)


def test_constant_scales_reassociate():
    gm, done = check(Scales(), torch.randn(4, 6), ("reassociate_scales",))
    assert done["reassociate_scales"]
    assert targets(gm).count(aten.mul.Tensor) == 1


class Distributive(nn.Module):
    def forward(self, x):
        a, b = torch.relu(x), torch.sigmoid(x)
        return a * 0.25 + b * 0.25


def test_a_shared_factor_comes_out_of_the_sum():
    gm, done = check(Distributive(), torch.randn(3, 7), ("factor_common_scale",))
    assert done["factor_common_scale"]
    assert targets(gm).count(aten.mul.Tensor) == 1


class WeightMath(nn.Module):
    """A weight used through computations on constants only (a scaled transpose)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 4))
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x):
        return x @ (self.w.t() * self.scale)


def test_constants_fold_into_buffers():
    gm, done = check(WeightMath(), torch.randn(3, 4), ("fold_constants",))
    assert len(done["fold_constants"]) >= 2  # the transpose and the scaling
    assert targets(gm) == [aten.matmul.default]


def test_all_passes_together_on_a_convnet_with_folded_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 36, 5))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    folded = fuse(model).module  # BatchNorm folding is FuPruner's, shared
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    gm, _ = check(folded, x, tuple(PASSES))
    torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-5)


def test_unknown_pass_is_an_error():
    gm = exported(Scales(), torch.randn(2, 2))
    with pytest.raises(ValueError, match="unknown rewrite passes"):
        rewrite(gm, ("fold_everything",))
