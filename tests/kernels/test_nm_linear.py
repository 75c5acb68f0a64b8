"""N:M sparse linear (sparseforge::nm_linear): the C++ kernel, every ISA variant this CPU runs,
against F.linear with the masked dense weight; the reference, opcheck, SparseLinear format 'nm',
N:M detection and deploy's `nm` candidate. Timings are never asserted (deploy's is faked)."""

import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparseforge
from sparseforge.formats import NM
from sparseforge.formats.nm import detect_nm, fits_nm
from sparseforge.kernels import SparseLinear, extension, ops
from sparseforge.profile import Timing
from sparseforge.runtime import DENSE, deploy

pytestmark = pytest.mark.skipif(not extension.kernel_available("nm_linear"),
                                reason="the N:M C++ kernel does not build here")
deploy_module = importlib.import_module("sparseforge.runtime.deploy")
ISAS = extension.supported_isas()
PATTERNS = [(2, 4), (1, 4), (2, 8), (1, 8), (3, 8)]


def nm_weight(out: int, groups: int, n: int, m: int, seed: int = 0,
              short: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A random n:m weight (out, groups * m) and its mask; `short`: some groups keep < n."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, groups, m, generator=g)
    keep = w.abs().topk(n, dim=2).indices
    mask = torch.zeros_like(w, dtype=torch.bool).scatter_(2, keep, True)
    if short:
        mask[:, ::3, :] = False  # empty groups: padded with zeros in storage
    return (w * mask).reshape(out, -1), mask.reshape(out, -1)


def packed(w: torch.Tensor, mask: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, ...]:
    f = NM.from_dense(w, n, m, mask=mask)
    return f.values, f.indices


@settings(max_examples=25, deadline=None)
@given(pattern=st.sampled_from(PATTERNS), out=st.integers(1, 37), groups=st.integers(1, 11),
       batch=st.sampled_from([1, 2, 7, 8, 17, 33, 64]), bias=st.booleans(),
       short=st.booleans(), seed=st.integers(0, 2**16))
def test_every_isa_variant_equals_masked_dense(pattern, out, groups, batch, bias, short, seed):
    n, m = pattern
    w, mask = nm_weight(out, groups, n, m, seed, short)
    values, indices = packed(w, mask, n, m)
    x = torch.randn(batch, groups * m, generator=torch.Generator().manual_seed(seed + 1))
    b = torch.randn(out) if bias else None
    want = F.linear(x, w, b)
    for isa in ISAS:
        got = extension.kernel("nm_linear", variant=isa)(x, values, indices, b, out, n, m)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{isa}")
    torch.testing.assert_close(ops.nm_linear_reference(x, values, indices, b, out, n, m), want)


@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("batch", [1, 5, 40])
@pytest.mark.parametrize("with_residual", [False, True])
def test_epilogue_equals_reference(activation, batch, with_residual):
    w, mask = nm_weight(24, 6, 2, 4)
    values, indices = packed(w, mask, 2, 4)
    x, b = torch.randn(batch, 24), torch.randn(24)
    res = torch.randn(batch, 24) if with_residual else None
    want = ops.epilogue_reference(F.linear(x, w, b), activation, res)
    for isa in ISAS:
        got = extension.kernel("nm_linear", variant=isa)(x, values, indices, b, 24, 2, 4,
                                                         activation, res)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ops.nm_linear(x, values, indices, b, 24, 2, 4, activation, res),
                               want, rtol=1e-5, atol=1e-5)


def test_leading_dims_and_wide_indices():
    w, mask = nm_weight(9, 3, 2, 4)
    f = NM.from_dense(w, 2, 4, mask=mask)
    x = torch.randn(2, 3, 12)
    for idx in (f.indices, f.indices.to(torch.int16), f.indices.to(torch.int32)):
        got = ops.nm_linear(x, f.values, idx, None, 9, 2, 4)
        assert got.shape == (2, 3, 9)
        torch.testing.assert_close(got, F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_opcheck():
    w, mask = nm_weight(10, 4, 2, 8)
    values, indices = packed(w, mask, 2, 8)
    for args in [(torch.randn(3, 32), values, indices, torch.randn(10), 10, 2, 8),
                 (torch.randn(1, 32), values, indices, None, 10, 2, 8, "relu",
                  torch.randn(1, 10))]:
        torch.library.opcheck(torch.ops.sparseforge.nm_linear.default, args)


def test_bad_shapes_say_what_to_do():
    w, mask = nm_weight(4, 2, 2, 4)
    values, indices = packed(w, mask, 2, 4)
    with pytest.raises(RuntimeError, match="multiple of the group size"):
        ops.nm_linear(torch.randn(1, 10), values, indices, None, 4, 2, 4)
    with pytest.raises(RuntimeError, match="values must be float32"):
        ops.nm_linear(torch.randn(1, 8), values[:, :2], indices[:, :2], None, 4, 2, 4)


def test_storage_is_lossless_and_detection_picks_the_sparsest():
    w, mask = nm_weight(6, 4, 1, 8)  # a 1:8 mask also fits 1:4, 2:8, 2:4: the sparsest wins
    assert torch.equal(NM.from_dense(w, 1, 8, mask=mask).to_dense(), w)
    assert detect_nm(mask) == (1, 8)
    assert fits_nm(mask, 2, 8) and fits_nm(mask, 1, 4) and not fits_nm(mask, 1, 16)
    w4, mask4 = nm_weight(6, 8, 2, 4)
    assert detect_nm(mask4) == (2, 4)
    assert detect_nm(torch.ones(3, 8, dtype=torch.bool)) is None
    assert detect_nm(torch.zeros(3, 6, dtype=torch.bool)) is None  # 6 inputs: no m divides


@pytest.mark.parametrize("pattern", [(2, 4), (1, 4), (2, 8)])
def test_sparse_linear_nm_from_a_pruned_linear(pattern):
    n, m = pattern
    torch.manual_seed(0)
    lin = nn.Linear(32, 20)
    sparseforge.prune(lin, {"name": "nm", "n": n, "m": m}, 1 - n / m)
    sl = SparseLinear.from_linear(lin, format="nm")
    assert sl.nm == (n, m) and "n=" in repr(sl)
    assert torch.equal(sl.to_format().to_dense(), lin.weight.detach())
    x = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(sl(x), lin(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="none of the N:M patterns"):
        SparseLinear.from_linear(nn.Linear(32, 4), format="nm")


def mlp_2_4() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 16))
    sparseforge.prune(model, {"name": "nm", "n": 2, "m": 4}, 0.5)
    return model


@pytest.mark.parametrize("winner", ["nm", DENSE])
def test_deploy_picks_nm_when_faster_and_outputs_equal(monkeypatch, winner):
    def timings(modules, x, device, repeats, rounds):
        return {k: Timing.from_samples([1e-4 if k == winner else 1e-3]) for k in modules}

    monkeypatch.setattr(deploy_module, "time_side_by_side", timings)
    model, x = mlp_2_4(), torch.randn(4, 64)
    deployed = deploy(model, x, candidates=["nm"], repeats=2, rounds=1)
    for r in deployed.plan:
        assert r["choice"] == winner and "nm" in r["candidates"], r
    kinds = [type(mod).__name__ for mod in deployed.module.modules()]
    assert ("SparseLinear" in kinds) == (winner == "nm")
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-5)


def test_deploy_skips_nm_for_a_mask_that_is_not_nm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    sparseforge.prune(model, "unstructured", 0.5)
    r = deploy(model, torch.randn(1, 64), candidates=["nm"], repeats=1, rounds=1).plan[0]
    assert r["choice"] == DENSE and "not N:M" in r["skipped"]["nm"]


def test_gpu_capable_candidates_list_cuda_as_a_target():
    from sparseforge.runtime import CANDIDATES

    for name in ("nm", "bsr16", "bsr8", "bcr16", "bcr8"):
        assert CANDIDATES.get(name).targets == ("cpu", "cuda"), name
    assert CANDIDATES.get("csr").targets == ("cpu",)  # no Triton CSR kernel
