"""sparseforge::winograd_int8_conv2d: the C++ kernel on every ISA variant this CPU runs
(avx512_amx, avx512_vnni, avx2, generic) against `winograd_int8_reference` over many shapes, opcheck, and the
variant plumbing of extension.py (the other kernels keep their avx2/generic variants).

Exactness: inputs are multiples of 1/4 in [-2, 2], so V = B^T d B is exact in fp32 whatever the
summation order, and the kernel and the reference quantize the same V with the same fp32 1/scale:
equal int8 codes and (exact integer GEMMs) equal int32 accumulators. What remains is fp32
rounding of dequantize + A^T M A (<= 36 terms, coefficients <= 64), measured ~1e-6 of max|y|; we
allow 1e-5 * max|y|, while one accumulator off by one moves an output by out_scale * |A coef|,
about 1e-3 of max|y|, a hundred times the tolerance."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.kernels import extension, winograd_ops
from sparseforge.quant.winograd import (
    input_transform,
    pack_weights,
    quantize_uint8,
    quantize_weights,
    winograd_int8_reference,
)

VARIANTS = extension.supported_isas(winograd_ops.VARIANTS)


def quantized_args(n, c, k, h, w, tile, padding, seed, per_channel=False, bias=True):
    """Quarter-integer x, random weights, V scales from x itself (70% of max |V|: some clipping)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-8, 9, (n, c, h, w), generator=g).float() / 4
    weight = torch.randn(k, c, 3, 3, generator=g)
    v = input_transform(x, tile, tuple(padding)).abs()  # (aa, C, P)
    vmax = v.amax(2) if per_channel else v.amax((1, 2))[:, None].expand(-1, c)
    v_scale = (0.7 * vmax / 127).clamp(min=1e-3).contiguous()
    q_u, out_scale = quantize_weights(weight, v_scale, tile)
    u_packed, u_sum = pack_weights(q_u)
    b = torch.randn(k, generator=g) if bias else None
    return x, u_packed, u_sum, v_scale, out_scale, b


def assert_int_exact(out, ref):
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("variant", VARIANTS)
@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 21), k=st.integers(1, 40), h=st.integers(3, 11),
       w=st.integers(3, 11), tile=st.sampled_from([2, 4]), pad=st.integers(0, 1),
       pad_w=st.integers(0, 1), relu=st.booleans(), per_channel=st.booleans(), seed=st.integers(0, 99))
def test_kernel_equals_reference_of_the_quantized_algorithm(
        variant, n, c, k, h, w, tile, pad, pad_w, relu, per_channel, seed):
    args = quantized_args(n, c, k, h, w, tile, [pad, pad_w], seed, per_channel, bias=seed % 3 > 0)
    ref = winograd_int8_reference(*args, tile, [pad, pad_w], relu)
    out = winograd_ops.cpu_kernel(variant)(*args, tile, [pad, pad_w], relu)
    assert out.shape == ref.shape == (n, k, h + 2 * pad - 2, w + 2 * pad_w - 2)
    assert_int_exact(out, ref)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tile", [2, 4])
def test_kernel_wide_channels_cover_every_register_block(variant, tile):
    # C = 70 (not a multiple of 4 or 64), K = 83 (not a multiple of 16): the VNNI kernel's
    # 4 x 16 out-channel blocks, its 1..3 remainders, and ragged tile blocks all run
    args = quantized_args(2, 70, 83, 13, 10, tile, [1, 1], seed=5)
    ref = winograd_int8_reference(*args, tile, [1, 1], True)
    assert_int_exact(winograd_ops.cpu_kernel(variant)(*args, tile, [1, 1], True), ref)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n, h, k", [(2, 30, 200), (1, 7, 512)])
def test_kernel_many_tile_blocks_and_channel_chunks(variant, n, h, k):
    # 450 F(2,3) tiles: many tile blocks, the last one ragged; K = 200: several out-channel
    # chunks, the last ragged. Batch 1 at 7x7 with K = 512: few tiles, so the kernel splits
    # the out channels across jobs
    for tile in (2, 4):
        args = quantized_args(n, 20, k, h, h, tile, [1, 1], seed=11)
        ref = winograd_int8_reference(*args, tile, [1, 1], True)
        assert_int_exact(winograd_ops.cpu_kernel(variant)(*args, tile, [1, 1], True), ref)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("c, h, w", [(70, 13, 10), (16, 4, 4), (3, 9, 1)])
def test_kernel_takes_nchw_channels_last_and_strided_inputs_alike(variant, c, h, w):
    # the VNNI variant transposes an NCHW input itself (16 x 16 blocks: C = 70 and H * W = 130
    # leave partial blocks); a channels-last input is read in place; W = 1 is the degenerate
    # case where a tensor can be both
    args = quantized_args(2, c, 21, h, w, 4, [1, 1], seed=2)
    ref = winograd_int8_reference(*args, 4, [1, 1], False)
    x, rest = args[0], args[1:]
    kernel = winograd_ops.cpu_kernel(variant)
    for xin in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
        assert_int_exact(kernel(xin, *rest, 4, [1, 1], False), ref)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tile", [2, 4])
def test_kernel_adds_a_residual_before_the_relu(variant, tile):
    # K = 21: the last out-channel vector is partial, so the residual is read through a mask;
    # an NCHW residual is converted, a channels-last one read in place
    args = quantized_args(2, 9, 21, 11, 10, tile, [1, 1], seed=4)
    g = torch.Generator().manual_seed(1)
    residual = torch.randint(-8, 9, (2, 21, 11, 10), generator=g).float() / 4
    ref = winograd_int8_reference(*args, tile, [1, 1], True, residual)
    assert not torch.equal(ref, winograd_int8_reference(*args, tile, [1, 1], True))
    kernel = winograd_ops.cpu_kernel(variant)
    for r in (residual, residual.contiguous(memory_format=torch.channels_last)):
        assert_int_exact(kernel(*args, tile, [1, 1], True, r), ref)
    with pytest.raises(RuntimeError, match="residual must be float32 shaped like the output"):
        kernel(*args, tile, [1, 1], True, residual[:, :, :-1])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tile", [2, 4])
def test_kernel_reads_a_uint8_input_as_its_dequantized_values(variant, tile):
    # PT2E's dequantize folded in: with a power-of-two x_scale the dequantized input is a
    # quarter-integer float32 tensor, and x_scale / v_scale rounds as 1 / v_scale does, so the
    # uint8 call must equal the float32 call on (x - zero point) * x_scale exactly. C = 9:
    # lanes past the channels are masked (they must read 0, not -zero point); K = 21.
    _, *rest = quantized_args(2, 9, 21, 11, 10, tile, [1, 1], seed=5)
    g = torch.Generator().manual_seed(2)
    kernel = winograd_ops.cpu_kernel(variant)
    for zp in (0, 131, 255):
        xq = torch.randint(0, 256, (2, 9, 11, 10), generator=g, dtype=torch.uint8)
        xq[0, :, :3] = zp  # real zeros, like the padding around the image
        ref = kernel((xq.int() - zp).float() * 0.25, *rest, tile, [1, 1], True)
        for x in (xq, xq.contiguous(memory_format=torch.channels_last)):
            assert_int_exact(kernel(x, *rest, tile, [1, 1], True, None, 0.25, zp), ref)
        assert_int_exact(winograd_int8_reference(xq, *rest, tile, [1, 1], True, None, 0.25, zp), ref)
    # any scale: the kernel against the reference of the same algorithm
    ref = winograd_int8_reference(xq, *rest, tile, [1, 1], True, None, 0.0123, 7)
    assert_int_exact(kernel(xq, *rest, tile, [1, 1], True, None, 0.0123, 7), ref)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tile", [2, 4])
def test_kernel_writes_a_uint8_output_as_pt2e_quantize_per_tensor(variant, tile):
    # PT2E's quantize_per_tensor folded into the epilogue, after bias, residual and relu: the
    # codes equal quantizing the op's own float32 output, exactly (values past 0..255 clamp)
    import torchao.quantization.pt2e  # noqa: F401  (registers quantized_decomposed, PT2E's q/dq ops)

    args = quantized_args(2, 9, 21, 11, 10, tile, [1, 1], seed=6)
    residual = torch.randn(2, 21, 11, 10, generator=torch.Generator().manual_seed(3))
    kernel = winograd_ops.cpu_kernel(variant)
    for relu, r, scale, zp in ((True, None, 0.05, 0), (False, residual, 0.037, 128)):
        y = kernel(*args, tile, [1, 1], relu, r)
        q = kernel(*args, tile, [1, 1], relu, r, 1.0, 0, scale, zp)
        assert q.dtype == torch.uint8 and q.is_contiguous(memory_format=torch.channels_last)
        expected = torch.ops.quantized_decomposed.quantize_per_tensor(y, scale, zp, 0, 255, torch.uint8)
        assert torch.equal(q, expected)
        assert torch.equal(quantize_uint8(y, scale, zp), expected)
        assert 0 < (q == 255).sum() and (q == 0).sum() > 0  # both clamps are exercised


def test_kernel_rejects_inconsistent_quantization_arguments():
    x, *rest = quantized_args(1, 6, 5, 6, 6, 2, [1, 1], seed=0)
    kernel = winograd_ops.cpu_kernel(VARIANTS[-1])
    with pytest.raises(RuntimeError, match="x_scale and x_zero_point describe a uint8 x"):
        kernel(x, *rest, 2, [1, 1], False, None, 0.5, 3)
    with pytest.raises(RuntimeError, match="x_zero_point in 0..255"):
        kernel(x.to(torch.uint8), *rest, 2, [1, 1], False, None, 0.5, 300)
    with pytest.raises(RuntimeError, match="y_scale must be > 0"):
        kernel(x, *rest, 2, [1, 1], False, None, 1.0, 0, 0.0, 0)


def test_variants_agree():
    # same int32 accumulators; the fp32 epilogue may differ by FMA contraction (avx2 / avx512
    # builds fuse multiply-adds, generic does not), so up to the int-exact tolerance
    args = quantized_args(2, 13, 29, 9, 8, 4, [1, 1], seed=7)
    outs = [winograd_ops.cpu_kernel(v)(*args, 4, [1, 1], False) for v in VARIANTS]
    for out in outs[1:]:
        assert_int_exact(out, outs[0])


@pytest.mark.parametrize("tile", [2, 4])
def test_opcheck(tile):
    args = quantized_args(2, 6, 18, 7, 9, tile, [1, 0], seed=3)
    torch.library.opcheck(torch.ops.sparseforge.winograd_int8_conv2d.default,
                          (*args, tile, [1, 0], True))
    residual = torch.randn(2, 18, 7, 7)
    torch.library.opcheck(torch.ops.sparseforge.winograd_int8_conv2d.default,
                          (*args, tile, [1, 0], True, residual))
    xq = (args[0] * 4 + 8).to(torch.uint8)  # uint8 in and out (PT2E's q/dq folded in)
    torch.library.opcheck(torch.ops.sparseforge.winograd_int8_conv2d.default,
                          (xq, *args[1:], tile, [1, 0], True, None, 0.25, 8, 0.1, 3))


def test_bound_kernel_is_the_cpp_op_with_the_fake_impl():
    # graph/lower.py calls the C++ kernel itself: the best variant, with the public op's fake
    from sparseforge.kernels import ops

    bound = ops.bound_kernel("winograd_int8_conv2d")
    assert bound.name() == winograd_ops.cpu_kernel()._qualified_op_name
    args = quantized_args(2, 6, 18, 7, 9, 2, [1, 1], seed=4)
    xq = (args[0] * 4 + 8).to(torch.uint8)
    for call in [(*args, 2, [1, 1], True, None, 1.0, 0, None, 0),
                 (xq, *args[1:], 2, [1, 1], False, None, 0.25, 8, 0.1, 3)]:
        assert torch.equal(bound(*call), torch.ops.sparseforge.winograd_int8_conv2d(*call))
        torch.library.opcheck(bound, call)


def test_op_rejects_wrongly_packed_weights_with_a_hint():
    x, u_packed, *rest = quantized_args(1, 6, 5, 6, 6, 2, [1, 1], seed=0)
    with pytest.raises(RuntimeError, match="pack_weights"):
        winograd_ops.cpu_kernel(VARIANTS[-1])(x, u_packed[:, :1], *rest, 2, [1, 1], False)


def test_vnni_variant_is_opt_in_per_kernel():
    assert "avx512_vnni" not in extension.supported_isas()  # the existing kernels' default list
    assert extension.supported_isas(winograd_ops.VARIANTS)[-1] == "generic"
    best = extension.best_isa(winograd_ops.VARIANTS)
    if extension.has_amx_int8():
        assert best == "avx512_amx"
    elif extension.has_avx512_vnni():
        assert best == "avx512_vnni"
    with pytest.raises(RuntimeError, match="cannot run"):
        extension.kernel("bsr_linear", "avx512_vnni")


TRITON_CHECK = """
import torch
from sparseforge.kernels import triton_winograd as tw
from sparseforge.quant.winograd import winograd_int8_reference
from test_winograd_kernel import quantized_args
for n, c, k, h, w, tile, pad in ((1, 5, 7, 6, 5, 2, [1, 1]), (2, 35, 40, 5, 7, 4, [0, 1])):
    args = quantized_args(n, c, k, h, w, tile, pad, seed=0)
    ref = winograd_int8_reference(*args, tile, pad, True)
    y = tw.winograd_int8_conv2d(*args, tile, pad, True)
    err, scale = (y - ref).abs().max().item(), max(1.0, ref.abs().max().item())
    assert y.shape == ref.shape and err <= 1e-5 * scale, (err, scale)
print("triton winograd interpreter ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_gemm_in_the_interpreter_equals_the_reference():
    """int8 tl.dot, int32 accumulation, fused dequantize; tiny shapes under TRITON_INTERPRET=1
    (read when the kernel is defined, hence a fresh process)."""
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "triton winograd interpreter ok" in proc.stdout
