"""The int8 CPU path: torchao PT2E + X86InductorQuantizer, compiled with inductor freezing.
Without freezing the q/dq graph is not lowered to oneDNN int8 kernels (and ran 16x slower
than fp32), so the tests read the generated code for the int8 ops."""

import pytest
import torch
from torch import nn

pytest.importorskip("torchao")
from torch._inductor.utils import run_and_get_code  # noqa: E402

from sparseforge.quant.deploy import compile_frozen, to_int8, to_int8_dynamic  # noqa: E402
from sparseforge.sparsity import apply_mask  # noqa: E402


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
    )
    apply_mask(model[3], torch.rand(model[3].weight.shape) > 0.5)  # masks are baked first
    return model.eval()


def test_int8_deploy_lowers_to_onednn_int8_at_every_batch_size():
    model = small_cnn()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 1, 8, 8, generator=g) for _ in range(4)]
    deployed = to_int8(model, calib).eval()  # evaluate() calls .eval(): must not raise
    x = torch.randn(32, 1, 8, 8, generator=g)
    with torch.no_grad():
        out, code = run_and_get_code(deployed, x)
        ref = model(x)
        # a second batch size recompiles: freezing must hold for that compile too
        out1, code1 = run_and_get_code(deployed, x[:1])
    for c in ("".join(code), "".join(code1)):
        assert "onednn.qconv_pointwise" in c and "onednn.qlinear_pointwise" in c
        assert "_frozen_param" in c
    assert torch.allclose(out1, out[:1], atol=1e-4)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


class ReusedReLU(nn.Module):
    """One ReLU module called after two convolutions, as torchvision's BasicBlock does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))))


def test_frozen_compile_of_a_module_already_compiled_plainly_compiles_anew():
    # Dynamo caches per forward code object and two default torch.compile backends compare
    # equal: without its own options the frozen compile reused the plain (unfrozen) graph
    from torch._dynamo.utils import counters

    model, x = small_cnn(), torch.randn(2, 1, 8, 8)
    with torch.inference_mode():
        torch.compile(model, dynamic=False)(x)
        graphs = counters["stats"]["unique_graphs"]
        out = compile_frozen(model)(x)
        torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] == graphs + 1


def test_int8_deploy_of_a_module_called_twice():
    torch.manual_seed(0)
    model = ReusedReLU().eval()
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        out, ref = to_int8(model, [x], compile=False)(x), model(x)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def winograd_cnn() -> tuple[nn.Module, nn.Module, list[torch.Tensor], torch.Generator]:
    """(fp32 model, its int8 Winograd copy with BatchNorm folded, calibration batches, rng)."""
    from sparseforge.quant.winograd_conv import quantize_winograd

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),  # stays a conv
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),  # becomes Winograd
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),  # Winograd, reading the one before's uint8
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 1, 8, 8, generator=g) for _ in range(4)]
    wino, skipped = quantize_winograd(model, calib, tile=2, fold_bn=True)
    assert len(skipped) == 1  # the stride-2 conv
    return model, wino, calib, g


def test_int8_deploy_around_our_winograd_layers():
    # BatchNorm folding makes the Winograd model an fx GraphModule whose recorded module stack
    # still named the swapped conv nn.Conv2d, and the quantizer then took our op for a conv
    model, wino, calib, g = winograd_cnn()
    x = torch.randn(16, 1, 8, 8, generator=g)
    with torch.no_grad():
        out, code = run_and_get_code(to_int8(wino, calib), x)
        ref = model(x)
    code = "".join(code)
    assert "onednn.qconv_pointwise" in code and "onednn.qlinear_pointwise" in code
    assert "winograd_int8_conv2d" in code
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_int8_deploy_through_the_planner_passes_uint8_into_and_out_of_our_winograd_op():
    # fuse=True: the fusion planner folds the quantize / dequantize around our op into it,
    # one lowering per input shape; the stride-2 conv and the linear stay oneDNN int8
    model, wino, calib, g = winograd_cnn()
    planned, frozen = to_int8(wino, calib, fuse=True), to_int8(wino, calib)
    x = torch.randn(16, 1, 8, 8, generator=g)
    with torch.no_grad():
        (out, code), ref, base = run_and_get_code(planned, x), model(x), frozen(x)
        torch.testing.assert_close(planned(x[:3]), base[:3], rtol=0, atol=0.02 * base.abs().max())
    assert sorted(planned.lowered) == [(3, 1, 8, 8), (16, 1, 8, 8)]
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    assert (out - base).abs().max() < 0.02 * base.abs().max()  # int8 as to_int8's, rounded apart
    gm = planned.lowered[(16, 1, 8, 8)].graph_module
    first, second = [n for n in gm.graph.nodes if "winograd" in str(n.target)]
    assert "y_scale" in first.kwargs and second.args[0] is first and "x_scale" in second.kwargs
    code = "".join(code)  # the planner's C++ wrapper calls oneDNN through AOTInductor's C shim
    assert "aoti_torch_cpu__qconv_pointwise" in code and "aoti_torch_cpu__qlinear_pointwise" in code
    assert "winograd_int8_conv2d" in code


def test_int8_deploy_needs_a_batch_to_export():
    with pytest.raises(ValueError, match="at least 2"):
        to_int8(small_cnn(), [torch.randn(1, 1, 8, 8)])
    with pytest.raises(ValueError, match="at least one example"):
        to_int8(small_cnn(), [])


def test_dynamic_int8_linears_close_to_fp32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    x = torch.randn(16, 64)
    with torch.no_grad():
        out = to_int8_dynamic(model, compile=False)(x)
        ref = model(x)
    assert not torch.equal(out, ref)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
