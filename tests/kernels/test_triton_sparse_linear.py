"""Triton BSR / BCR / N:M linears (kernels/triton_sparse_linear.py) against the `*_reference`
twins, run in Triton's interpreter (TRITON_INTERPRET=1, on CPU tensors, in a subprocess: the
variable is read when a kernel is defined) on small shapes that are not multiples of the
blocks; on a CUDA machine also through `torch.ops.sparseforge.*` on the GPU."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None

CHECK = textwrap.dedent("""
    import sys
    import torch
    from sparseforge.formats import BCR, BSR, NM
    from sparseforge.kernels import ops
    from sparseforge.kernels.sparse_linear import _buffers
    from sparseforge.sparsity.schemes import SCHEMES

    def cases(device, dtype):
        '''(name, triton-or-op call, reference call) on awkward shapes, every epilogue.'''
        gen = torch.Generator().manual_seed(0)
        tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 3e-2, "atol": 3e-2}
        for (n_out, k, batch), act, use_res in [((19, 40, 3), "relu", True),
                                                ((5, 24, 18), "gelu", False),
                                                ((33, 16, 1), "none", True)]:
            x = torch.randn(batch, k, generator=gen)
            bias, res = torch.randn(n_out, generator=gen), torch.randn(batch, n_out, generator=gen)
            res = res if use_res else None
            w = torch.randn(n_out, k, generator=gen)
            for block in [(8, 8), (4, 16), (16, 3)]:
                bw = w.clone(); bw[:, : k // 3] = 0  # some empty tiles, ragged edges
                bu = _buffers(BSR.from_dense(bw, block))
                args = (bu["crow_indices"], bu["col_indices"], bu["values_t"], bias, n_out, act)
                yield f"bsr{block}", x, args, res, ops.bsr_linear_reference, "bsr_linear", tol
            for block in [(8, 8), (4, 8)]:
                mask = SCHEMES.get("bcr")(w.abs(), 0.6, block=block)
                bu = _buffers(BCR.from_dense(w * mask, block, mask=mask))
                args = (bu["block_ids"], bu["group_shapes"], bu["group_ptr"], bu["row_indices"],
                        bu["col_indices"], bu["values_t"], bias, n_out, *block, act)
                yield f"bcr{block}", x, args, res, ops.bcr_linear_reference, "bcr_linear", tol
            for n, m in [(2, 4), (1, 4), (2, 8)]:
                if k % m:
                    continue
                mask = SCHEMES.get("nm")(w.abs(), 1 - n / m, n=n, m=m)
                f = NM.from_dense(w * mask, n, m, mask=mask)
                args = (f.values, f.indices, bias, n_out, n, m, act)
                yield f"nm{n}:{m}", x, args, res, ops.nm_linear_reference, "nm_linear", tol

    def main(device, dtype):
        from sparseforge.kernels import triton_sparse_linear as tsl
        for name, x, args, res, reference, op, tol in cases(device, dtype):
            want = reference(x, *args, res)
            cast = [a.to(device, dtype) if torch.is_tensor(a) and a.is_floating_point()
                    else (a.to(device) if torch.is_tensor(a) else a) for a in args]
            xd = x.to(device, dtype)
            rd = None if res is None else res.to(device, dtype)
            call = getattr(torch.ops.sparseforge, op) if device == "cuda" else getattr(tsl, op)
            got = call(xd, *cast, rd)
            assert got.dtype == dtype and got.shape == want.shape, (name, got.dtype, got.shape)
            torch.testing.assert_close(got.float().cpu(), want, **tol, msg=name)
        print("triton sparse linear ok")

    main(sys.argv[1], getattr(torch, sys.argv[2]))
""")


def run_check(device: str, dtype: str, interpret: bool) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"} if interpret else dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", CHECK, device, dtype], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "triton sparse linear ok" in proc.stdout


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_triton_kernels_in_the_interpreter_equal_the_reference(dtype):
    run_check("cpu", dtype, interpret=True)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA + triton")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_ops_on_cuda_equal_the_reference(dtype):
    run_check("cuda", dtype, interpret=False)


def test_import_sparseforge_does_not_import_triton_sparse_linear():
    code = ("import sys, sparseforge.kernels; "
            "print('sparseforge.kernels.triton_sparse_linear' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
