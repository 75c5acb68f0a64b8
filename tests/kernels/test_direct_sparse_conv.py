"""sparseforge::sparse_conv2d (direct sparse convolution) against F.conv2d on the masked weight,
epilogue included, on every ISA variant this CPU runs; opcheck; DirectSparseConv2d's lossless
storage and save/load; and deploy choosing the `direct` candidate with outputs equal to the
masked model."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.formats import CSR
from sparseforge.kernels import extension
from sparseforge.kernels.conv_ops import sparse_conv2d, sparse_conv2d_reference
from sparseforge.kernels.sparse_conv import DirectSparseConv2d
from sparseforge.runtime.candidates import CANDIDATES, check
from sparseforge.runtime.deploy import deploy
from sparseforge.runtime.deployed import DeployedModel, apply_plan, set_submodule
from sparseforge.sparsity.masks import apply_mask, bake_masks

ISAS = extension.supported_isas()


def masked_weight(o: int, c: int, k: int, s: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, c, k, k) weight with each entry dropped with probability s; returns (weight, mask)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(o, c, k, k, generator=g) >= s
    return torch.randn(o, c, k, k, generator=g) * mask, mask


def packed(w: torch.Tensor, index: torch.dtype = torch.int32) -> tuple[torch.Tensor, ...]:
    f = CSR.from_dense(w.reshape(w.shape[0], -1))
    return f.crow_indices.to(index), f.col_indices.to(index), f.values


def assert_close_rel(y: torch.Tensor, ref: torch.Tensor) -> None:
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    torch.testing.assert_close(y, ref, rtol=0, atol=2e-5 * scale)


@settings(max_examples=80, deadline=None)
@given(
    batch=st.integers(1, 3), c=st.integers(1, 19), o=st.integers(1, 21),
    h=st.integers(1, 13), w=st.integers(1, 13), k=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]), padding=st.sampled_from([0, 1]), s=st.floats(0.0, 0.99),
    bias=st.booleans(), residual=st.booleans(), act=st.sampled_from(["none", "relu", "gelu"]),
    isa=st.sampled_from(ISAS), index=st.sampled_from([torch.int32, torch.int64]),
    seed=st.integers(0, 2**16),
)
def test_kernel_equals_conv2d_on_masked_weight(batch, c, o, h, w, k, stride, padding, s, bias,
                                               residual, act, isa, index, seed):
    if h + 2 * padding < k or w + 2 * padding < k:
        return  # no output: F.conv2d refuses too
    weight, _ = masked_weight(o, c, k, s, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, c, h, w, generator=g)
    b = torch.randn(o, generator=g) if bias else None
    ref = F.conv2d(x, weight, b, stride, padding)
    res = torch.randn(ref.shape, generator=g) if residual else None
    if res is not None:
        ref = ref + res
    ref = {"none": ref, "relu": F.relu(ref), "gelu": F.gelu(ref)}[act]
    y = extension.kernel("sparse_conv2d", isa)(
        x, *packed(weight, index), b, [k, k], [stride, stride], [padding, padding], [1, 1], act, res)
    assert y.shape == ref.shape
    assert_close_rel(y, ref)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("c,o,hw,k,stride,padding", [
    (16, 32, 32, 3, 2, 1), (64, 64, 8, 3, 1, 1), (5, 7, (9, 30), (1, 5), (2, 1), (0, 2)),
    (3, 4, 40, 3, 1, 0),
    (2, 3, (130, 70), 3, 1, 1),  # 130 * 70 outputs: several row tiles per plane
    (192, 160, 7, 3, 1, 1),  # a deep ResNet layer: 7 pieces a plane, nonzeros split across threads
])
def test_larger_and_rectangular_shapes(isa, c, o, hw, k, stride, padding):
    hw, k, stride, padding = ((v, v) if isinstance(v, int) else v for v in (hw, k, stride, padding))
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(o, c, *k, generator=g) >= 0.9
    weight = torch.randn(o, c, *k, generator=g) * mask
    x = torch.randn(2, c, *hw, generator=g).to(memory_format=torch.channels_last)
    y = extension.kernel("sparse_conv2d", isa)(x, *packed(weight), None, list(k), list(stride),
                                              list(padding), [1, 1], "none", None)
    assert_close_rel(y, F.conv2d(x, weight, None, stride, padding))


def test_reference_twin_and_all_zero_weight():
    weight, _ = masked_weight(6, 4, 3, 0.5, 3)
    x, b = torch.randn(2, 4, 7, 5), torch.randn(6)
    ref = sparse_conv2d_reference(x, *packed(weight), b, [3, 3], [1, 1], [1, 1])
    assert torch.equal(ref, F.conv2d(x, weight, b, 1, 1))
    zero = torch.zeros(6, 4, 3, 3)
    y = sparse_conv2d(x, *packed(zero), b, [3, 3], [2, 2], [1, 1])
    assert torch.equal(y, b.view(1, 6, 1, 1).expand(2, 6, 4, 3))


def test_rejects_dilation_and_wrong_channels():
    weight, _ = masked_weight(6, 4, 3, 0.5, 3)
    with pytest.raises(RuntimeError, match="dilation"):
        sparse_conv2d(torch.randn(1, 4, 8, 8), *packed(weight), None, [3, 3], [1, 1], [1, 1], [2, 2])
    with pytest.raises(RuntimeError, match=r"col_indices\[\d+\] = \d+ is outside .* in_channels"):
        sparse_conv2d(torch.randn(1, 2, 8, 8), *packed(weight), None, [3, 3])
    with pytest.raises(ValueError, match="dilation"):
        DirectSparseConv2d.from_conv(nn.Conv2d(4, 4, 3, dilation=2))
    with pytest.raises(ValueError, match="groups=2"):
        DirectSparseConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))


@pytest.mark.parametrize("epilogue", [False, True])
def test_opcheck(epilogue):
    weight, _ = masked_weight(5, 3, 3, 0.7, 1)
    x = torch.randn(2, 3, 9, 8)
    res = torch.randn(2, 5, 5, 4) if epilogue else None
    args = (x, *packed(weight), torch.randn(5) if epilogue else None, [3, 3], [2, 2], [1, 1],
            [1, 1], "relu" if epilogue else "none", res)
    torch.library.opcheck(torch.ops.sparseforge.sparse_conv2d.default, args)


def test_module_from_masked_conv_is_lossless_and_round_trips_state():
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    _, mask = masked_weight(10, 6, 3, 0.9, 2)
    apply_mask(conv, mask)
    dense_masked = conv.weight.detach().clone()
    direct = DirectSparseConv2d.from_conv(conv)
    assert torch.equal(direct.to_format().to_dense().reshape(dense_masked.shape), dense_masked)
    x = torch.randn(3, 6, 11, 9)
    with torch.no_grad():
        want = F.conv2d(x, dense_masked, conv.bias, 2, 1)
    assert_close_rel(direct(x), want)
    again = DirectSparseConv2d.from_conv(conv)
    again.load_state_dict(direct.state_dict())
    assert torch.equal(again(x), direct(x))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3)))


def test_deploy_measures_direct_and_outputs_equal_masked_model():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    for name, o, c in (("conv1", 16, 3), ("conv2", 24, 16)):
        apply_mask(getattr(model, name), masked_weight(o, c, 3, 0.9, 5)[1])
    x = torch.randn(2, 3, 12, 12)
    deployed = deploy(model, x, candidates=["direct"], repeats=1, rounds=1)
    plan = {r["name"]: r for r in deployed.plan}
    for name in ("conv1", "conv2"):  # built, equal to dense on the real input, and timed
        assert "direct" in plan[name]["candidates"], plan[name]["skipped"]
    assert plan["head"]["skipped"]["direct"].startswith("only for Conv2d")
    with torch.no_grad():
        assert_close_rel(deployed(x), model(x))


def test_forced_direct_layers_compute_the_masked_model():
    torch.manual_seed(1)
    model = SmallCNN().eval()
    apply_mask(model.conv2, masked_weight(24, 16, 3, 0.95, 6)[1])
    forced = bake_masks(copy.deepcopy(model))
    for name in ("conv1", "conv2"):  # conv1 has no zero: `direct` refuses it, built anyway
        set_submodule(forced, name, CANDIDATES.get("direct").build(getattr(forced, name)))
    assert check(CANDIDATES.get("direct"), model.conv1, None, "cpu") == "no zero weight: nothing to skip"
    assert isinstance(forced.conv2, DirectSparseConv2d)
    x = torch.randn(3, 3, 10, 10)
    with torch.no_grad():
        assert_close_rel(forced(x), model(x))


def test_deployment_choosing_direct_saves_and_loads(tmp_path):
    torch.manual_seed(2)
    model = SmallCNN().eval()
    for name, o, c in (("conv1", 16, 3), ("conv2", 24, 16)):
        apply_mask(getattr(model, name), masked_weight(o, c, 3, 0.9, 7)[1])
    x = torch.randn(2, 3, 12, 12)
    deployed = deploy(model, x, candidates=["direct"], repeats=1, rounds=1)
    for record in deployed.plan:  # as if `direct` had measured fastest on every conv
        if record["type"] == "Conv2d":
            record["choice"] = "direct"
    deployed.module = apply_plan(model, deployed.plan, "cpu")
    deployed.save(tmp_path)
    loaded = DeployedModel.load(tmp_path, model)
    assert isinstance(loaded.module.conv2, DirectSparseConv2d)
    with torch.no_grad():
        assert torch.equal(loaded(x), deployed(x))
        assert_close_rel(loaded(x), model(x))
