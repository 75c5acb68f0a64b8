"""sparseforge::sparse_input_linear and ::relu_gated_ffn against their references on every ISA
path this CPU runs (batch 1..16 and beyond, sparsity 0..1 incl. all-zero and all-dense,
FATReLU thresholds, column chunking and the row split across threads); opcheck;
SparseInputLinear and ReluGatedFFN against the dense nn.Linear / gated FFN, their fallbacks,
torch.compile; the Triton kernels in Triton's interpreter."""

import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.kernels import (
    ReluGatedFFN,
    SparseInputLinear,
    extension,
    ops,
    relu_gated_ffn_reference,
    sparse_input_linear_reference,
)

ISAS = extension.supported_isas()
SPARSITY = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))


def sparse_act(b: int, k: int, s: float, seed: int) -> torch.Tensor:
    """(b, k) activation with each entry zeroed with probability s (ReLU-like: >= 0)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g).abs() * (torch.rand(b, k, generator=g) >= s)


def assert_close_rel(y: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(1.0, float(ref.detach().abs().max())) if ref.numel() else 1.0
    torch.testing.assert_close(y, ref, rtol=0, atol=tol * scale)


def gated_weights(h: int, i: int, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g) for shape in ((i, h), (i, h), (i, n)))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 70), k=st.integers(1, 90), s=SPARSITY, batch=st.integers(1, 16),
    bias=st.booleans(), isa=st.sampled_from(ISAS), seed=st.integers(0, 2**16),
)
def test_sparse_input_linear_equals_dense_linear(n, k, s, batch, bias, isa, seed):
    a = sparse_act(batch, k, s, seed)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed + 1))
    b = torch.randn(n) if bias else None
    y = extension.kernel("sparse_input_linear", isa, file=ops.ACT_SPARSE_FILE)(a, w.t().contiguous(), b)
    assert y.shape == (batch, n)
    assert_close_rel(y, F.linear(a, w, b))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch", [1, 3, 8, 16, 37])
@pytest.mark.parametrize("n,k,s", [
    (5000, 300, 0.9),  # two column chunks (over 4096 columns each)
    (300, 1100, 0.5),  # one chunk: with two threads the active rows split, partials summed
    (129, 700, 0.97),
])
def test_sparse_input_linear_chunks_and_row_split(isa, batch, n, k, s):
    a, wt = sparse_act(batch, k, s, batch), torch.randn(k, n)
    b = torch.randn(n)
    assert_close_rel(extension.kernel("sparse_input_linear", isa, file=ops.ACT_SPARSE_FILE)(a, wt, b),
                     sparse_input_linear_reference(a, wt, b))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activation", ops.ACTIVATIONS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("batch,n,k,s", [
    (1, 70, 90, 0.9), (7, 33, 50, 0.0), (16, 300, 1100, 0.5),  # the last splits active rows
    (3, 5000, 300, 0.9),  # two column chunks
])
def test_sparse_input_linear_epilogue_equals_linear_then_ops(isa, activation, residual, batch, n, k, s):
    a, wt, b = sparse_act(batch, k, s, n), torch.randn(k, n), torch.randn(n)
    res = torch.randn(batch, n) if residual else None
    y = extension.kernel("sparse_input_linear", isa, file=ops.ACT_SPARSE_FILE)(a, wt, b, activation, res)
    ref = F.linear(a, wt.t(), b) + (res if residual else 0)
    ref = {"none": ref, "relu": torch.relu(ref), "gelu": F.gelu(ref),
           "gelu_tanh": F.gelu(ref, approximate="tanh")}[activation]
    assert_close_rel(y, ref)
    assert_close_rel(ops.sparse_input_linear_reference(a, wt, b, activation, res), ref)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threshold", [0.0, 1.3, -0.4])
@pytest.mark.parametrize("batch,n,k", [(1, 70, 90), (9, 40, 300), (16, 300, 1100)])
def test_sparse_input_linear_prologue_equals_fatrelu_then_linear(isa, threshold, batch, n, k):
    a = torch.randn(batch, k, generator=torch.Generator().manual_seed(k))
    a[0, :3] = float("nan")  # FATReLU drops NaN (v >= t is false), as ops.fatrelu does
    wt, b, res = torch.randn(k, n), torch.randn(n), torch.randn(batch, n)
    y = extension.kernel("sparse_input_linear", isa, file=ops.ACT_SPARSE_FILE)(
        a, wt, b, "relu", res, threshold)
    ref = torch.relu(F.linear(ops.fatrelu(a, threshold), wt.t(), b) + res)
    assert torch.isfinite(ref).all()
    assert_close_rel(y, ref)
    assert_close_rel(ops.sparse_input_linear_reference(a, wt, b, "relu", res, threshold), ref)


def test_sparse_input_linear_keeps_leading_dims_and_signed_inputs():
    a = torch.randn(2, 5, 40) * (torch.rand(2, 5, 40) > 0.7)  # negative values, -0.0 too
    a[0, 0, :5] = -0.0
    wt, b = torch.randn(40, 24), torch.randn(24)
    y = ops.sparse_input_linear(a, wt, b)
    assert y.shape == (2, 5, 24)
    assert_close_rel(y, sparse_input_linear_reference(a, wt, b))


def test_all_zero_activation_gives_exactly_the_bias():
    wt, b = torch.randn(64, 48), torch.randn(48)
    assert torch.equal(ops.sparse_input_linear(torch.zeros(4, 64), wt, b), b.expand(4, 48))
    assert torch.equal(ops.sparse_input_linear(torch.zeros(1, 64), wt, None), torch.zeros(1, 48))


def test_empty_dims():
    b = torch.randn(5)
    assert torch.equal(ops.sparse_input_linear(torch.zeros(3, 0), torch.zeros(0, 5), b),
                       b.expand(3, 5))  # K = 0: the bias
    assert ops.sparse_input_linear(torch.zeros(0, 4), torch.randn(4, 5), b).shape == (0, 5)
    y = ops.relu_gated_ffn(torch.randn(2, 0, 6), *gated_weights(6, 10, 3, 0), 0.0)
    assert y.shape == (2, 0, 3)


def test_reference_twins_equal_dense_modules_exactly():
    lin = nn.Linear(30, 20)
    a = torch.relu(torch.randn(6, 30))
    with torch.no_grad():
        assert torch.equal(sparse_input_linear_reference(a, lin.weight.t(), lin.bias), lin(a))


@pytest.mark.parametrize("call,match", [
    (lambda: ops.sparse_input_linear(torch.randn(2, 12), torch.randn(11, 5), None),
     r"K = 12 but weight_t is \[11, 5\]"),
    (lambda: ops.sparse_input_linear(torch.randn(2, 12).double(), torch.randn(12, 5), None),
     "a must be float32.*Double"),
    (lambda: ops.sparse_input_linear(torch.randn(2, 12), torch.randn(12, 5), torch.randn(4)),
     r"bias must be \(N,\)"),
    (lambda: ops.sparse_input_linear(torch.randn(2, 12), torch.randn(12, 5), None, "swish"),
     "activation must be .none., .relu., .gelu. .erf. or .gelu_tanh., got .swish."),
    (lambda: ops.sparse_input_linear(torch.randn(2, 12), torch.randn(12, 5), None, "none",
                                     torch.randn(2, 4)),
     "residual must be float32 shaped like the output"),
    (lambda: ops.relu_gated_ffn(torch.randn(2, 8), *gated_weights(9, 16, 8, 0), 0.0),
     "w_gate and w_up must both be .I, H. with H = x.shape.-1. = 8"),
    (lambda: ops.relu_gated_ffn(torch.randn(2, 8), torch.randn(16, 8), torch.randn(16, 8),
                                torch.randn(15, 8), 0.0),
     r"w_down_t must be W_down\^T, \(I, N\) with I = 16, got \[15, 8\]"),
])
def test_errors_name_the_shapes(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 40), i=st.integers(1, 80), n=st.integers(1, 40), batch=st.integers(1, 20),
    threshold=st.sampled_from([0.0, 0.5, 2.0, -0.5, 1e9]), isa=st.sampled_from(ISAS),
    seed=st.integers(0, 2**16),
)
def test_relu_gated_ffn_equals_reference(h, i, n, batch, threshold, isa, seed):
    x = torch.randn(batch, h, generator=torch.Generator().manual_seed(seed))
    weights = gated_weights(h, i, n, seed + 1)
    y = extension.kernel("relu_gated_ffn", isa, file=ops.ACT_SPARSE_FILE)(x, *weights, threshold)
    assert y.shape == (batch, n)
    assert_close_rel(y, relu_gated_ffn_reference(x, *weights, threshold), tol=1e-4)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch", [1, 16])
def test_relu_gated_ffn_at_ffn_like_shape(isa, batch):
    x, weights = torch.randn(2, batch, 96), gated_weights(96, 700, 96, batch)
    for threshold in (0.0, 4.0):  # ~50% and ~95% of the gates zero
        y = extension.kernel("relu_gated_ffn", isa, file=ops.ACT_SPARSE_FILE)(x, *weights, threshold)
        assert_close_rel(y, relu_gated_ffn_reference(x, *weights, threshold), tol=1e-4)


def test_relu_gated_ffn_nan_gate_is_dropped_like_the_reference():
    x, (wg, wu, wd) = torch.randn(3, 8), gated_weights(8, 12, 5, 0)
    wg[4] = float("nan")  # gate of neuron 4 is NaN for every token: FATReLU gives 0
    ref = relu_gated_ffn_reference(x, wg, wu, wd, 0.0)
    assert torch.isfinite(ref).all()
    assert_close_rel(ops.relu_gated_ffn(x, wg, wu, wd, 0.0), ref, tol=1e-4)


@pytest.mark.parametrize("bias,epilogue", [(True, False), (False, False), (True, True)])
def test_opcheck_sparse_input_linear(bias, epilogue):
    args = (sparse_act(5, 50, 0.8, 1), torch.randn(50, 37), torch.randn(37) if bias else None)
    if epilogue:
        args = (*args, "relu", torch.randn(5, 37), 0.3)
    torch.library.opcheck(torch.ops.sparseforge.sparse_input_linear.default, args)


def test_opcheck_relu_gated_ffn():
    args = (torch.randn(4, 24), *gated_weights(24, 64, 24, 2), 0.25)
    torch.library.opcheck(torch.ops.sparseforge.relu_gated_ffn.default, args)


def _gated_linears(h: int, i: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    return nn.Linear(h, i, bias=False), nn.Linear(h, i, bias=False), nn.Linear(i, h, bias=False)


def _dense_gated(gate, up, down, x, threshold):
    g = gate(x)
    return down(torch.where(g >= threshold, g, 0.0) * up(x))


def test_sparse_input_linear_module_matches_nn_linear():
    fc1, fc2 = nn.Linear(32, 128), nn.Linear(128, 32)
    sparse = nn.Sequential(fc1, nn.ReLU(), SparseInputLinear.from_linear(fc2))  # BERT FFN
    dense = nn.Sequential(fc1, nn.ReLU(), fc2)
    with torch.no_grad():
        for shape in ((1, 32), (7, 32), (2, 3, 32)):
            x = torch.randn(*shape)
            assert_close_rel(sparse(x), dense(x))
        x64 = torch.randn(4, 32, dtype=torch.float64)  # not float32: the reference runs
        sparse64, dense64 = sparse.double(), dense.double()
        torch.testing.assert_close(sparse64(x64), dense64(x64))


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_relu_gated_ffn_module_matches_dense_gated_ffn(threshold):
    gate, up, down = _gated_linears(48, 160)
    ffn = ReluGatedFFN.from_linears(gate, up, down, threshold)
    with torch.no_grad():
        for shape in ((1, 48), (16, 48), (2, 5, 48)):
            x = torch.randn(*shape)
            assert_close_rel(ffn(x), _dense_gated(gate, up, down, x, threshold), tol=1e-4)


def test_relu_gated_ffn_rejects_biased_linears():
    gate, up, down = _gated_linears(8, 16)
    with pytest.raises(ValueError, match="up has a bias.*SparseInputLinear"):
        ReluGatedFFN.from_linears(gate, nn.Linear(8, 16), down)


def test_modules_run_under_torch_compile():
    gate, up, down = _gated_linears(32, 96)
    model = nn.Sequential(ReluGatedFFN.from_linears(gate, up, down), nn.ReLU(),
                          SparseInputLinear.from_linear(nn.Linear(32, 16))).eval()
    x = torch.randn(5, 32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    program = torch.export.export(model, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"sparseforge.relu_gated_ffn.default",
            "sparseforge.sparse_input_linear.default"} <= targets  # the ops, not decompositions


def test_falls_back_to_reference_with_one_warning_naming_the_compiler_error(broken_source):
    broken_source("act_sparse_ffn")
    lin = nn.Linear(12, 10)
    sl, x = SparseInputLinear.from_linear(lin), torch.relu(torch.randn(3, 12))
    with pytest.warns(RuntimeWarning, match="did not build: .*act_sparse_ffn.cpp.*error"):
        y = sl(x)
    torch.testing.assert_close(y, lin(x).detach())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sl(x)  # warned once only
        ReluGatedFFN.from_linears(*_gated_linears(12, 20))(x)


TRITON_CHECK = textwrap.dedent("""
    import torch
    from sparseforge.kernels import ops, triton_act_sparse as tas

    def check(y, ref, tol):
        scale = max(1.0, float(ref.abs().max()))
        err = float((y.float() - ref).abs().max()) if ref.numel() else 0.0
        assert err <= tol * scale, (err, scale)

    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 3e-3)):
        for b, k, n, s in ((1, 37, 53, 0.9), (5, 100, 70, 0.5), (16, 64, 64, 1.0),
                           (17, 33, 20, 0.0), (3, 200, 130, 0.95)):
            a = torch.randn(b, k) * (torch.rand(b, k) >= s)
            wt, bias = torch.randn(k, n), torch.randn(n)
            y = tas.sparse_input_linear(a.to(dtype), wt.to(dtype), bias.to(dtype))
            assert y.dtype == dtype and y.shape == (b, n)
            ref = ops.sparse_input_linear_reference(*(t.to(dtype).float() for t in (a, wt, bias)))
            check(y, ref, tol)
        res = torch.randn(b, n).to(dtype)  # the op's CUDA impl: Triton, then the epilogue
        y = ops._sparse_input_linear_cuda(a.to(dtype), wt.to(dtype), bias.to(dtype), "relu", res, 0.2)
        check(y, ops.sparse_input_linear_reference(*(t.to(dtype).float() for t in (a, wt, bias)),
                                                   "relu", res.float(), 0.2), tol)
        for b, h, i, n, thr in ((1, 32, 70, 40, 0.0), (6, 50, 100, 33, 0.5), (16, 16, 16, 16, 0.0)):
            args = [torch.randn(b, h), torch.randn(i, h), torch.randn(i, h), torch.randn(i, n)]
            y = tas.relu_gated_ffn(*(t.to(dtype) for t in args), thr)
            assert y.dtype == dtype and y.shape == (b, n)
            ref = ops.relu_gated_ffn_reference(*(t.to(dtype).float() for t in args), thr)
            check(y, ref, 10 * tol)
    print("triton interpreter ok")
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernels_in_the_interpreter_equal_the_reference():
    """float32 and float16 on CPU tensors under TRITON_INTERPRET=1 (read when a kernel is
    decorated, so in a fresh process). bfloat16 is left out: the interpreter's tl.dot on
    bfloat16 is wrong (a 16x16 bf16 tl.dot is off by ~1e10 while bf16 loads are exact)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "triton interpreter ok" in proc.stdout
