"""What every C++ kernel shares: a failed build falls back to the reference twin with one
warning naming the compiler error, and `import sparseforge` builds and loads nothing."""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from sparseforge.kernels import SparseLinear

FORMATS = ("bsr", "bcr", "csr")


@pytest.mark.parametrize("fmt", FORMATS)
def test_falls_back_to_reference_with_one_warning_naming_the_compiler_error(broken_source, fmt):
    broken_source(f"{fmt}_linear")
    lin = nn.Linear(12, 10)
    sl = SparseLinear.from_linear(lin, (4, 4), format=fmt)  # dense: BCR-shaped too
    x = torch.randn(3, 12)
    with pytest.warns(RuntimeWarning, match=f"did not build: .*error.*{fmt}_linear"):
        y = sl(x)
    expected = lin(x).detach()
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-5 * max(1.0, float(expected.abs().max())))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sl(x)  # warned once only


def test_import_builds_and_loads_no_extension(tmp_path):
    code = (
        "import sys, torch, sparseforge, sparseforge.kernels\n"
        f"for name in {FORMATS!r}:\n"
        "    for isa in ('avx2', 'generic'):\n"
        "        assert not hasattr(torch.ops.sparseforge, f'_{name}_linear_{isa}'), name\n"
        "assert 'torch.utils.cpp_extension' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SPARSEFORGE_EXT_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "sparseforge").exists()


def _sparse_mlp(fmt: str) -> nn.Module:
    torch.manual_seed(0)
    first, second = nn.Linear(32, 48), nn.Linear(48, 16)
    with torch.no_grad():
        for lin in (first, second):  # every other 4x4 tile zero: BSR/BCR/CSR-shaped sparsity
            keep = (torch.arange(lin.out_features)[:, None] // 4 + torch.arange(lin.in_features) // 4) % 2 == 0
            lin.weight.mul_(keep)
    return nn.Sequential(SparseLinear.from_linear(first, (4, 4), format=fmt), nn.ReLU(),
                         SparseLinear.from_linear(second, (4, 4), format=fmt)).eval()


@pytest.mark.parametrize("fmt", FORMATS)
def test_sparse_layers_survive_torch_export(fmt):
    model, x = _sparse_mlp(fmt), torch.randn(3, 32)
    program = torch.export.export(model, (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert f"sparseforge.{fmt}_linear.default" in ops  # the custom op, not a decomposition
    torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.parametrize("fmt", FORMATS)
def test_sparse_layers_run_under_torch_compile(fmt):
    model, x = _sparse_mlp(fmt), torch.randn(5, 32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
