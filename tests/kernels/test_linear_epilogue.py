"""The epilogue of sparseforge::{bsr,bcr,csr}_linear: y = act(x @ W^T + b + residual), on every
ISA path this CPU runs, against F.linear on the masked dense weight followed by the same ops in
PyTorch; the reference twins; opcheck with each epilogue; bad arguments fail clearly."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.kernels import SparseLinear, extension, ops
from sparseforge.kernels.sparse_linear import _OPS
from sparseforge.sparsity import schemes

ISAS = extension.supported_isas()
FORMATS = ("bsr", "bcr", "csr")
ACTS = ops.ACTIVATIONS


def layer(fmt: str, n: int, k: int, s: float, seed: int, bias: bool) -> tuple[SparseLinear, torch.Tensor]:
    """A SparseLinear in `fmt` at sparsity ~s (4x4 tiles for BSR/BCR) and its dense weight."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, k, generator=g)
    if fmt == "bcr":
        mask = schemes.bcr(scores, s, block=(4, 4))
    elif fmt == "bsr":
        mask = schemes.block(scores, s, block=(4, 4))
    else:
        mask = schemes.unstructured(scores, s)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * mask)
    return SparseLinear.from_linear(lin, (4, 4), fmt, mask=mask), lin.weight.detach()


def op_args(sl: SparseLinear) -> tuple:
    """The op's arguments after x, up to and including its block sizes."""
    _, _, names = _OPS[sl.format]
    args = (*(getattr(sl, name) for name in names), sl.bias, sl.out_features)
    return (*args, *sl.block) if sl.format == "bcr" else args


def expected(x, w, b, activation, residual):
    y = F.linear(x, w, b)
    if residual is not None:
        y = y + residual
    if activation == "relu":
        return torch.relu(y)
    if activation != "none":
        return F.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")
    return y


def assert_close_rel(y: torch.Tensor, ref: torch.Tensor) -> None:
    scale = max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(y, ref, rtol=0, atol=2e-5 * scale)


@settings(max_examples=80, deadline=None)
@given(
    fmt=st.sampled_from(FORMATS), n=st.integers(1, 70), k=st.integers(1, 70),
    s=st.floats(0.0, 0.95), batch=st.integers(1, 64), bias=st.booleans(),
    activation=st.sampled_from(ACTS), residual=st.booleans(), isa=st.sampled_from(ISAS),
    seed=st.integers(0, 2**16),
)
def test_kernel_epilogue_equals_linear_then_ops(fmt, n, k, s, batch, bias, activation, residual, isa, seed):
    sl, w = layer(fmt, n, k, s, seed, bias)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, k, generator=g)  # (B, K)
    r = torch.randn(batch, n, generator=g) if residual else None  # (B, N)
    y = extension.kernel(f"{fmt}_linear", isa)(x, *op_args(sl), activation, r)
    assert y.shape == (batch, n)
    assert_close_rel(y, expected(x, w, sl.bias, activation, r))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("lead", [(1,), (2, 9), (33,)])
def test_larger_shapes_leading_dims_and_both_batch_paths(isa, fmt, activation, lead):
    sl, w = layer(fmt, 70, 100, 0.7, 0, True)
    x, r = torch.randn(*lead, 100), torch.randn(*lead, 70)  # (..., K), (..., N)
    y = extension.kernel(f"{fmt}_linear", isa)(x, *op_args(sl), activation, r)
    assert_close_rel(y, expected(x, w, sl.bias, activation, r))


@pytest.mark.parametrize("fmt", FORMATS)
def test_defaults_keep_the_old_call_and_the_reference_twin_is_exact(fmt):
    sl, w = layer(fmt, 29, 41, 0.5, 3, True)
    x, r = torch.randn(6, 41), torch.randn(6, 29)
    _, reference, _ = _OPS[fmt]
    assert torch.equal(getattr(torch.ops.sparseforge, f"{fmt}_linear")(x, *op_args(sl)),
                       getattr(torch.ops.sparseforge, f"{fmt}_linear")(x, *op_args(sl), "none", None))
    for act in ACTS:
        want = expected(x, sl.to_format().to_dense(), sl.bias, act, r)
        assert torch.equal(reference(x, *op_args(sl), act, r), want)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("residual", [True, False])
def test_opcheck(fmt, activation, residual):
    sl, _ = layer(fmt, 37, 50, 0.5, 1, True)
    x = torch.randn(5, 50)
    args = (x, *op_args(sl), activation, torch.randn(5, 37) if residual else None)
    torch.library.opcheck(getattr(torch.ops.sparseforge, f"{fmt}_linear").default, args)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_activation_and_residual_shape_fail_clearly(fmt):
    sl, _ = layer(fmt, 8, 12, 0.5, 0, False)
    x = torch.randn(3, 12)
    op = getattr(torch.ops.sparseforge, f"{fmt}_linear")
    with pytest.raises(RuntimeError, match="activation must be"):
        op(x, *op_args(sl), "swish", None)
    with pytest.raises(RuntimeError, match="residual must be"):
        op(x, *op_args(sl), "none", torch.randn(3, 9))
    with pytest.raises(ValueError, match="activation must be"):
        ops.epilogue_reference(x, "swish")


@pytest.mark.parametrize("fmt", FORMATS)
def test_bound_kernel_is_the_cpp_op_with_a_fake_impl(fmt):
    sl, _ = layer(fmt, 37, 50, 0.5, 1, True)
    args = (torch.randn(5, 50), *op_args(sl), "relu", torch.randn(5, 37))
    bound = ops.bound_kernel(f"{fmt}_linear")
    assert bound.name() == f"sparseforge::_{fmt}_linear_{extension.best_isa()}"
    assert torch.equal(bound(*args), getattr(torch.ops.sparseforge, f"{fmt}_linear")(*args))
    torch.library.opcheck(bound, args)


def test_eager_calls_run_the_cpp_kernel_and_an_exported_graph_keeps_the_public_op():
    sl, _ = layer("csr", 12, 20, 0.5, 2, True)
    assert ops.eager_op("csr_linear", torch.zeros(1)) is ops.bound_kernel("csr_linear")
    x = torch.randn(3, 20)
    targets = {str(n.target) for n in torch.export.export(sl, (x,)).graph.nodes if n.op == "call_function"}
    assert "sparseforge.csr_linear.default" in targets
    assert not any(t.startswith("sparseforge._csr_linear_") for t in targets)
