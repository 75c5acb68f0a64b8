import inspect
import io

import pytest
import torch

from sparseforge.formats import BCR, BSR, CSR, NM, load_format, storage_report, to_format
from sparseforge.sparsity.schemes import SCHEMES

# (scheme, params, sparsity) giving ~90% zeros; N:M at 1:10 is exactly 90%
CASES = [
    ("unstructured", {}, 0.9),
    ("block", {"block": (4, 4)}, 0.9),
    ("nm", {"n": 1, "m": 10}, 0.9),
    ("bcr", {"block": (8, 8)}, 0.9),
]
KINDS = {"unstructured": CSR, "block": BSR, "nm": NM, "bcr": BCR}


@pytest.mark.parametrize("scheme,params,s", CASES)
@pytest.mark.parametrize("shape", [(60, 80), (20, 10, 3, 3)])
def test_state_round_trips_through_torch_save_weights_only(make_weight, scheme, params, s, shape):
    w, _ = make_weight(shape, scheme, s, **params)
    f = to_format(w, scheme, **params)
    state = {"fc.bias": torch.ones(3), **f.to_state("fc.weight::")}
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    g = load_format(loaded, "fc.weight::")
    assert type(g) is KINDS[scheme] and g.shape == shape
    assert torch.equal(g.to_dense(), w)
    assert torch.equal(type(f).from_state(loaded, "fc.weight::").to_dense(), w)


@pytest.mark.parametrize("scheme,params,s", CASES)
def test_nbytes_is_below_dense_at_90_percent(make_weight, scheme, params, s):
    w, _ = make_weight((60, 80), scheme, s, **params)
    f = to_format(w, scheme, **params)
    report = storage_report(w, f)
    assert report.dense_bytes == 60 * 80 * 4 and report.format_bytes == f.nbytes
    assert f.nbytes < report.dense_bytes and report.ratio > 1
    assert f.nbytes == sum(t.numel() * t.element_size() for t in f.to_state().values())


@pytest.mark.parametrize("scheme,params,s", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_values_keep_the_weight_dtype(make_weight, scheme, params, s, dtype):
    w, _ = make_weight((20, 40), scheme, s, **params)
    w = w.to(dtype)
    f = to_format(w, scheme, **params)
    assert f.to_dense().dtype == dtype and torch.equal(f.to_dense(), w)


@pytest.mark.parametrize("scheme,params,_", CASES)
@pytest.mark.parametrize("shape", [(12, 20), (6, 10, 3, 3)])
def test_an_all_zero_weight_round_trips(scheme, params, _, shape):
    w = torch.zeros(shape)
    f = to_format(w, scheme, **params)
    assert torch.equal(f.to_dense(), w)
    assert f.values.numel() == (w.numel() // 10 if scheme == "nm" else 0)  # N:M stores padding


@pytest.mark.parametrize("scheme,params", [("unstructured", {}), ("block", {"block": (4, 3)}),
                                           ("bcr", {"block": (8, 8)})])
@pytest.mark.parametrize("shape", [(13, 21), (6, 5, 3, 3)])
def test_a_fully_dense_weight_round_trips(scheme, params, shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    f = to_format(w, scheme, **params)
    assert torch.equal(f.to_dense(), w)
    assert f.values.numel() >= w.numel()  # everything stored (BSR also its edge padding)


def test_to_format_dispatches_and_shares_the_schemes_defaults(make_weight):
    for name, cls in KINDS.items():
        from_dense = inspect.signature(cls.from_dense).parameters
        for p in inspect.signature(SCHEMES.get(name)).parameters.values():
            if p.name not in ("scores", "sparsity"):
                assert from_dense[p.name].default == p.default, (name, p.name)
    w, _ = make_weight((8, 16), "nm", 0.75, n=1, m=4)
    f = to_format(w, "1:4")
    assert isinstance(f, NM) and (f.n, f.m) == (1, 4) and torch.equal(f.to_dense(), w)


def test_to_format_refuses_schemes_without_a_format():
    with pytest.raises(ValueError, match="no compact format for scheme 'channel'.*as CSR"):
        to_format(torch.zeros(4, 4), "channel")


def test_load_format_and_storage_report_errors_say_what_is_wrong():
    f = CSR.from_dense(torch.eye(3))
    with pytest.raises(KeyError, match="state has no 'w::format'"):
        load_format(f.to_state("x::"), "w::")
    state = f.to_state("w::")
    del state["w::values"]
    with pytest.raises(KeyError, match=r"no 'w::values'; was it written by CSR.to_state"):
        load_format(state, "w::")
    with pytest.raises(ValueError, match=r"weight shape \(4, 3\) differs"):
        storage_report(torch.zeros(4, 3), f)
