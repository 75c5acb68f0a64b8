"""sparseforge::gemv_linear against F.linear followed by the epilogue in PyTorch, on every ISA
path this CPU runs: the 8-row tile (batch 1), the 4-row x token-pair tiles (2-16 rows), the
leftover rows and columns, and at::linear past 16 rows; opcheck; GemvLinear; the deploy
candidate and a deployment using it saved and loaded; the reference fallback."""

import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.kernels import GemvLinear, extension, gemv_linear_reference, ops
from sparseforge.profile import Timing
from sparseforge.runtime import CANDIDATES, DeployedModel, deploy
from sparseforge.runtime.candidates import check

ISAS = extension.supported_isas()
deploy_module = importlib.import_module("sparseforge.runtime.deploy")  # the module, not the function


def assert_close_rel(y: torch.Tensor, ref: torch.Tensor) -> None:
    scale = max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(y, ref, rtol=0, atol=2e-5 * scale)


def expected(x, w, b, activation="none", residual=None):
    y = F.linear(x, w, b)
    if residual is not None:
        y = y + residual
    if activation == "relu":
        return torch.relu(y)
    if activation != "none":
        return F.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")
    return y


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 70), k=st.integers(1, 90), batch=st.integers(1, 20), bias=st.booleans(),
    residual=st.booleans(), activation=st.sampled_from(ops.ACTIVATIONS),
    isa=st.sampled_from(ISAS), seed=st.integers(0, 2**16),
)
def test_kernel_equals_dense_linear_and_epilogue(n, k, batch, bias, residual, activation, isa, seed):
    g = torch.Generator().manual_seed(seed)
    w, x = torch.randn(n, k, generator=g), torch.randn(batch, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    r = torch.randn(batch, n, generator=g) if residual else None
    y = extension.kernel("gemv_linear", isa)(x, w, b, activation, r)
    assert y.shape == (batch, n)
    assert_close_rel(y, expected(x, w, b, activation, r))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,k,lead", [(515, 300, (1,)), (64, 1030, (2,)), (37, 50, (3, 3)),
                                      (3, 8, (16,)), (33, 65, (17,)), (40, 24, (2, 40))])
def test_larger_shapes_leading_dims_and_the_gemm_path(isa, n, k, lead):
    torch.manual_seed(0)
    w, b = torch.randn(n, k), torch.randn(n)
    x, r = torch.randn(*lead, k), torch.randn(*lead, n)  # (..., K): leading dims pass through
    y = extension.kernel("gemv_linear", isa)(x, w, b, "relu", r)
    assert y.shape == (*lead, n)
    assert_close_rel(y, expected(x, w, b, "relu", r))


def test_a_non_contiguous_weight_and_input_are_read_correctly():
    w, x = torch.randn(48, 20).t(), torch.randn(48, 3).t()  # (20, 48) and (3, 48), transposed views
    assert_close_rel(torch.ops.sparseforge.gemv_linear(x, w, None), F.linear(x, w))


def test_reference_twin_is_the_dense_linear():
    w, x, b = torch.randn(9, 13), torch.randn(4, 13), torch.randn(9)
    assert torch.equal(gemv_linear_reference(x, w, b), F.linear(x, w, b))


def test_rejects_a_mismatched_input_and_a_wrong_dtype():
    w = torch.randn(10, 12)
    with pytest.raises(RuntimeError, match=r"x must be \(\.\.\., 12\)"):
        extension.kernel("gemv_linear")(torch.randn(2, 11), w, None, "none", None)
    with pytest.raises(RuntimeError, match="float32"):
        extension.kernel("gemv_linear")(torch.randn(2, 12), w.double(), None, "none", None)
    with pytest.raises(RuntimeError, match="residual must be"):
        extension.kernel("gemv_linear")(torch.randn(2, 12), w, None, "none", torch.randn(2, 9))


@pytest.mark.parametrize("epilogue", [("none", False), ("relu", True), ("gelu", True)])
def test_opcheck(epilogue):
    activation, residual = epilogue
    args = (torch.randn(3, 50), torch.randn(37, 50), torch.randn(37), activation,
            torch.randn(3, 37) if residual else None)
    torch.library.opcheck(torch.ops.sparseforge.gemv_linear.default, args)


def test_gemv_linear_module_equals_the_linear_and_keeps_its_weight_in_the_state_dict():
    torch.manual_seed(1)
    lin = nn.Linear(50, 37)
    layer = GemvLinear.from_linear(lin)
    for batch in (1, 2, 7, 32):
        x = torch.randn(batch, 50)
        assert_close_rel(layer(x), lin(x))
    assert set(layer.state_dict()) == {"weight", "bias"}
    assert torch.equal(layer.state_dict()["weight"], lin.weight.detach())


def test_the_deploy_candidate_takes_float32_linears_and_builds_a_gemv_linear():
    gemv = CANDIDATES.get("gemv")
    assert check(gemv, nn.Linear(8, 4), None, "cpu") is None
    assert "float32" in check(gemv, nn.Linear(8, 4).double(), None, "cpu")
    assert "only for Linear" in check(gemv, nn.Conv2d(1, 1, 3), None, "cpu")
    assert "cpu" in check(gemv, nn.Linear(8, 4), None, "cuda")
    assert isinstance(gemv.build(nn.Linear(8, 4)), GemvLinear)


def test_without_the_kernel_the_module_falls_back_to_the_reference(broken_source):
    broken_source("gemv_linear")
    torch.manual_seed(2)
    lin = nn.Linear(12, 5)
    layer = GemvLinear.from_linear(lin)
    x = torch.randn(2, 12)
    with pytest.warns(RuntimeWarning, match="falls back to the"):
        y = layer(x)
    assert torch.equal(y, F.linear(x, lin.weight, lin.bias))
    assert "did not build" in check(CANDIDATES.get("gemv"), lin, None, "cpu")


def test_a_deployment_choosing_gemv_saves_and_loads(tmp_path, monkeypatch):
    def gemv_fastest(modules, x, device, repeats, rounds):
        return {n: Timing.from_samples([1e-4 if n == "gemv" else 1e-3]) for n in modules}

    monkeypatch.setattr(deploy_module, "time_side_by_side", gemv_fastest)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 5)).eval()
    x = torch.randn(1, 24)
    deployed = deploy(model, x, candidates=["gemv"], repeats=1, rounds=1)
    assert set(deployed.choices().values()) == {"gemv"}
    deployed.save(tmp_path)
    loaded = DeployedModel.load(tmp_path, model)
    assert isinstance(loaded.module[0], GemvLinear)
    with torch.no_grad():
        assert torch.equal(loaded(x), deployed(x))
        assert_close_rel(loaded(x), model(x))
