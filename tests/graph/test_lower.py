"""Lowering a fusion plan: the epilogues our sparse kernels can take (add of a same-shaped tensor,
then relu / gelu) become one kernel call each, what they cannot take stays in the graph for
TorchInductor, and the lowered module equals the unlowered graph on random inputs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.graph.fusion_plan import plan_model
from sparseforge.graph.lower import fuse_model, lower
from sparseforge.kernels import extension

FORMATS = ("bsr", "bcr", "csr")
LINEARS = (*FORMATS, "gemv")  # the sparse linears and the dense GEMV: one epilogue convention
aten = torch.ops.aten


def sparse(n_in: int, n_out: int, fmt: str, seed: int) -> nn.Module:
    """A SparseLinear (fmt) whose weight keeps every other 4x4 tile (BSR/BCR/CSR-shaped); for
    fmt "gemv", the same weight in a GemvLinear (dense)."""
    from sparseforge.kernels import GemvLinear, SparseLinear

    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        keep = (torch.arange(n_out)[:, None] // 4 + torch.arange(n_in) // 4) % 2 == 0
        lin.weight.mul_(keep)
    if fmt == "gemv":
        return GemvLinear.from_linear(lin)
    return SparseLinear.from_linear(lin, (4, 4), format=fmt)


class ResidualMLP(nn.Module):
    """x -> relu(fc(x) + x) twice, then a head: the residual add before the activation."""

    def __init__(self, fmt: str, width: int = 32) -> None:
        super().__init__()
        self.fc1, self.fc2 = sparse(width, width, fmt, 0), sparse(width, width, fmt, 1)
        self.head = sparse(width, 10, fmt, 2)

    def forward(self, x):  # (B, W)
        x = torch.relu(self.fc1(x) + x)
        x = torch.relu(x + self.fc2(x))  # the residual on the left
        return self.head(x)


class FFNBlock(nn.Module):
    """A transformer FFN: x + fc2(gelu(fc1(layer_norm(x)))), over (B, T, C)."""

    def __init__(self, fmt: str, approximate: str = "none", dim: int = 24, hidden: int = 64) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = sparse(dim, hidden, fmt, 3), sparse(hidden, dim, fmt, 4)
        self.approximate = approximate

    def forward(self, x):  # (B, T, C)
        return x + self.fc2(F.gelu(self.fc1(self.norm(x)), approximate=self.approximate))


def _ops(gm: torch.fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


def check_equal(model: nn.Module, x: torch.Tensor, **kwargs):
    model.eval()
    plan, gm = plan_model(model, x)
    with torch.no_grad():
        before = gm(x)
    fusion = lower(gm, plan, x, **kwargs)
    with torch.no_grad():
        torch.testing.assert_close(fusion.module(x), before)
        for _ in range(3):
            z = torch.randn_like(x)
            torch.testing.assert_close(fusion.module(z), model(z), rtol=1e-5, atol=1e-5)
    return fusion


@pytest.mark.parametrize("fmt", LINEARS)
def test_residual_mlp_epilogues_fold_into_the_kernels(fmt):
    fusion = check_equal(ResidualMLP(fmt), torch.randn(3, 32), compile=False)
    assert [lo.epilogue for lo in fusion.report.lowered] == [["add", "relu"], ["add", "relu"], []]
    ops = _ops(fusion.module.graph_module)
    assert not any("aten.add" in o or "aten.relu" in o for o in ops)
    bound = f"sparseforge._{fmt}_linear_{extension.best_isa()}.default"  # the C++ kernel itself
    assert ops == [bound] * 3
    assert set(fusion.report.bound.values()) == {f"sparseforge::_{fmt}_linear_{extension.best_isa()}"}


@pytest.mark.parametrize("fmt", LINEARS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_ffn_block_takes_gelu_and_the_residual_and_leaves_the_norm_to_inductor(fmt, approximate):
    fusion = check_equal(FFNBlock(fmt, approximate), torch.randn(2, 5, 24), compile=False)
    assert [lo.epilogue for lo in fusion.report.lowered] == [["gelu"], ["add"]]
    calls = [n for n in fusion.module.graph_module.graph.nodes if "sparseforge" in str(n.target)]
    assert calls[0].kwargs["activation"] == ("gelu_tanh" if approximate == "tanh" else "gelu")
    assert calls[1].kwargs["residual"] is not None
    assert any(b["ops"] == ["layer_norm"] for b in fusion.report.to_inductor)


def test_compiled_with_inductor_equals_the_graph_and_counts_its_kernels():
    model = nn.Sequential(FFNBlock("csr"), nn.ReLU(), FFNBlock("bsr")).eval()
    fusion = check_equal(model, torch.randn(1, 4, 24))
    assert fusion.report.compile["backend"] == "inductor" and fusion.report.compile["freezing"]
    assert fusion.report.compile["generated_kernels"] >= 1  # the layer norms
    assert fusion.report.compile["cpp_wrapper"]  # the kernels are called from C++
    assert "epilogues folded" in fusion.summary()


def test_a_cpp_wrapper_that_fails_to_compile_falls_back_to_the_python_wrapper(monkeypatch):
    import torch._inductor.compile_fx as inductor
    from torch._inductor import config

    compile_fx = inductor.compile_fx

    def no_cpp_wrapper(*args, **kwargs):
        if config.cpp_wrapper:
            raise RuntimeError("C++ compile failed: error: something\nmore")
        return compile_fx(*args, **kwargs)

    monkeypatch.setattr(inductor, "compile_fx", no_cpp_wrapper)
    model = nn.Sequential(FFNBlock("csr"), nn.ReLU()).eval()
    with pytest.warns(RuntimeWarning, match="C\\+\\+ wrapper failed .*something.*Python wrapper"):
        fusion = check_equal(model, torch.randn(1, 4, 24))
    assert fusion.report.compile["cpp_wrapper"] is False


class Unsupported(nn.Module):
    """What the kernel cannot take: an add after the activation, a broadcast add, an output with
    two users, an activation it does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = (sparse(16, 16, "csr", i) for i in range(4))

    def forward(self, x):  # (B, 16)
        x = x + torch.relu(self.a(x))  # relu folds, the add after it does not
        x = self.b(x) + x[:1]  # broadcast over the batch: not the output's shape
        y = self.c(x)
        x = torch.relu(y) + y  # y has two users
        return torch.sigmoid(self.d(x))


def test_what_the_kernel_cannot_take_is_left_to_inductor():
    fusion = check_equal(Unsupported(), torch.randn(3, 16), compile=False)
    assert [lo.epilogue for lo in fusion.report.lowered] == [["relu"], [], [], []]
    assert fusion.report.lowered[0].left_to_inductor == ["add"]
    assert fusion.report.lowered[3].left_to_inductor == ["sigmoid"]


def test_a_dense_model_goes_to_inductor_whole():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    fusion = fuse_model(model.eval(), torch.randn(2, 8), compile=False)
    assert fusion.report.lowered == []
    assert all(b["why"] == "stock ops" for b in fusion.report.to_inductor)


def test_lowering_is_saved_with_the_plan(tmp_path):
    fusion = fuse_model(ResidualMLP("bsr").eval(), torch.randn(2, 32), compile=False)
    fusion.save(tmp_path)
    assert (tmp_path / "fusion_plan.json").is_file() and (tmp_path / "lowering.json").is_file()
    assert '"epilogue": [' in (tmp_path / "lowering.json").read_text()


def direct_conv(c_in: int, c_out: int, seed: int) -> nn.Module:
    """A DirectSparseConv2d (3x3, padding 1) keeping about half its weights."""
    from sparseforge.kernels.sparse_conv import DirectSparseConv2d

    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) > 0.5)
    return DirectSparseConv2d.from_conv(conv)


class SparseBasicBlock(nn.Module):
    """ResNet's basic block on direct sparse convs: relu(conv2(relu(conv1(x))) + x)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1, self.conv2 = direct_conv(c, c, 5), direct_conv(c, c, 6)

    def forward(self, x):  # (B, C, H, W)
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)


def test_direct_sparse_conv_takes_the_residual_and_relu_of_a_basic_block():
    fusion = check_equal(SparseBasicBlock(), torch.randn(2, 8, 7, 9), compile=False)
    assert [lo.epilogue for lo in fusion.report.lowered] == [["relu"], ["add", "relu"]]
    ops = _ops(fusion.module.graph_module)
    assert not any("aten.add" in o or "aten.relu" in o for o in ops)
    assert ops == [f"sparseforge._sparse_conv2d_{extension.best_isa()}.default"] * 2


def test_nm_linear_takes_the_residual_and_relu():
    from sparseforge.kernels import SparseLinear

    torch.manual_seed(7)
    lin = nn.Linear(32, 32)
    with torch.no_grad():  # 2:4 along the inputs: keep the first two of every four
        lin.weight.mul_((torch.arange(32) % 4 < 2).float())
    layer = SparseLinear.from_linear(lin, format="nm", nm=(2, 4))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = layer

        def forward(self, x):
            return torch.relu(self.fc(x) + x)

    fusion = check_equal(Block(), torch.randn(3, 32), compile=False)
    assert [lo.epilogue for lo in fusion.report.lowered] == [["add", "relu"]]


def test_winograd_conv_takes_a_relu_and_the_residual_and_relu_of_a_block():
    from sparseforge.quant.winograd_conv import WinogradConv2d

    torch.manual_seed(8)
    convs = []
    for _ in range(2):
        w = WinogradConv2d(nn.Conv2d(8, 8, 3, padding=1), tile=2)
        w.calibrating = True
        w(torch.randn(4, 8, 6, 6))
        w.calibrating = False
        w.freeze()
        convs.append(w.eval())

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = convs

        def forward(self, x):
            y = torch.relu(self.a(x))  # the relu folds into the output transform
            return torch.relu(self.b(y) + y)  # the add becomes the kernel's residual

    fusion = check_equal(Net(), torch.randn(2, 8, 6, 6), compile=False)
    assert [lo.epilogue for lo in fusion.report.lowered] == [["relu"], ["add", "relu"]]
    assert fusion.report.lowered[1].left_to_inductor == []
    calls = [n for n in fusion.module.graph_module.graph.nodes if "winograd" in str(n.target)]
    relu_flags = [n.args[8] if len(n.args) > 8 else n.kwargs["relu"] for n in calls]
    residuals = [n.args[9] if len(n.args) > 9 else n.kwargs.get("residual") for n in calls]
    assert relu_flags == [True, True]
    assert residuals[0] is None and residuals[1] is calls[0]  # b's residual is a's output
    assert not any("aten.add" in o or "aten.relu" in o for o in _ops(fusion.module.graph_module))
    assert set(fusion.report.bound.values()) == {_winograd_kernel()}


def _winograd_kernel() -> str:
    """The C++ Winograd op of this CPU's best ISA, which the lowering calls directly."""
    from sparseforge.kernels import winograd_ops

    return winograd_ops.cpu_kernel()._qualified_op_name


def test_winograd_conv_in_a_pt2e_int8_graph_reads_and_writes_uint8():
    # torchao's PT2E (to_int8(fuse=True) annotates the Winograd op's input as uint8): a's dequantize
    # prologue and its relu -> quantize epilogue fold into the op, so b reads a's uint8
    # output directly; b takes the block's add (the stem's float32 output) and relu
    from sparseforge.quant.deploy import to_int8
    from sparseforge.quant.winograd_conv import quantize_winograd

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # stays a oneDNN int8 conv
            self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            return torch.relu(self.b(torch.relu(self.a(x))) + x)

    torch.manual_seed(10)
    batches = [torch.randn(4, 3, 12, 12) for _ in range(3)]
    int8 = to_int8(quantize_winograd(Block().eval(), batches, tile=2)[0], batches, compile=False, fuse=True)
    fusion = check_equal(int8, batches[0], compile=False)
    lowered = fusion.report.lowered
    assert [lo.prologue for lo in lowered] == [["dequantize_per_tensor"]] * 2
    assert [lo.epilogue for lo in lowered] == [["relu", "quantize_per_tensor"], ["add", "relu"]]
    a, b = [n for n in fusion.module.graph_module.graph.nodes if "winograd" in str(n.target)]
    assert a.kwargs["y_zero_point"] == b.kwargs["x_zero_point"] and a.kwargs["y_scale"] == b.kwargs["x_scale"]
    assert b.args[0] is a and a.args[0].meta["val"].dtype == torch.uint8
    assert a.meta["val"].dtype == torch.uint8 and b.meta["val"].dtype == torch.float32
    assert fusion.report.bound == {a.name: _winograd_kernel(), b.name: _winograd_kernel()}  # uint8 too


def test_winograd_conv_after_a_pt2e_max_pool_reads_the_pools_uint8_output():
    # as in ResNet's first block: the X86 quantizer gives the pool's output its input's qparams
    # and PT2E reuses that observer for our op's input (the op takes a float32 input without a
    # cast node between them), so no requantize sits between the pool and the op
    from sparseforge.quant.deploy import to_int8
    from sparseforge.quant.winograd_conv import quantize_winograd

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(3, 2, 1)  # modules, as torchvision's
            self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            p = self.pool(self.relu(self.stem(x)))
            return torch.relu(self.b(torch.relu(self.a(p))) + p)

    torch.manual_seed(11)
    batches = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    int8 = to_int8(quantize_winograd(Block().eval(), batches, tile=2)[0], batches, compile=False, fuse=True)
    a = next(n for n in int8.graph.nodes if "winograd" in str(n.target))
    dq = a.args[0]
    q = dq.args[0]
    assert "dequantize_per_tensor" in str(dq.target) and "quantize_per_tensor" in str(q.target)
    assert q.args[0].target is aten.max_pool2d.default  # not a dequantize: no requantize
    fusion = check_equal(int8, batches[0], compile=False)
    a = next(n for n in fusion.module.graph_module.graph.nodes if "winograd" in str(n.target))
    assert a.args[0].args[0].target is aten.max_pool2d.default  # reads the uint8 pool output
    # compiled, inductor hands both ops the channels-last tensors it holds (the op's
    # flexible_layout tag), where export traced the pool's output NCHW: no copy to NCHW that
    # the kernel would copy back
    seen = _winograd_inputs(fuse_model(int8, batches[0]).module, batches[0])
    assert len(seen) == 2 and all(t.is_contiguous(memory_format=torch.channels_last) for t in seen[0] + seen[1])
    assert [len(ts) for ts in seen] == [1, 2]  # a: x; b: x and the residual (the pool's output)


def _winograd_inputs(fn, x: torch.Tensor) -> list[list[torch.Tensor]]:
    """The 4-d tensor arguments (x, residual) of every Winograd kernel call `fn(x)` makes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if "winograd" in str(func):
                calls.append([a for a in [*args, *kwargs.values()]
                              if isinstance(a, torch.Tensor) and a.dim() == 4 and a.dtype != torch.int8])
            return func(*args, **kwargs)

    with torch.no_grad(), Record():
        fn(x)
    return calls


@pytest.mark.parametrize("up", ["linear", "gemv"])
def test_sparse_input_linear_takes_the_fatrelu_and_residual_of_a_prosparse_ffn(up):
    """With fc1 on our GEMV kernel the plan grows the FATReLU into fc1's block (a seed's
    successors come first), which cannot take it: fc2's prologue takes it from there."""
    from sparseforge.activation import FATReLU
    from sparseforge.kernels import GemvLinear, SparseInputLinear

    torch.manual_seed(9)
    fc1, fc2 = nn.Linear(24, 96), nn.Linear(96, 24)

    class FFN(nn.Module):  # relu(x + fc2(FATReLU(fc1(x)))), fc2 skipping the FATReLU's zeros
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = GemvLinear.from_linear(fc1) if up == "gemv" else fc1
            self.act, self.fc2 = FATReLU(0.3), SparseInputLinear.from_linear(fc2)

        def forward(self, x):
            return torch.relu(x + self.fc2(self.act(self.fc1(x))))

    fusion = check_equal(FFN(), torch.randn(2, 5, 24), compile=False)
    lowered = fusion.report.lowered[-1]
    assert lowered.epilogue == ["add", "relu"]
    assert lowered.prologue == ["ge", "zeros_like", "where"]
    if up == "gemv":
        assert [lo.left_to_inductor for lo in fusion.report.lowered] == [[], []]
    ops = _ops(fusion.module.graph_module)
    first = f"sparseforge._gemv_linear_{extension.best_isa()}.default" if up == "gemv" else "aten.linear.default"
    assert ops == [first, f"sparseforge._sparse_input_linear_{extension.best_isa()}.default"]
    call = next(n for n in fusion.module.graph_module.graph.nodes if "sparse_input" in str(n.target))
    assert call.kwargs["input_threshold"] == pytest.approx(0.3)


def test_a_pt2e_int8_graph_keeps_onednn_int8_through_the_planner():
    """(De)quantize ops are One-to-One, so the plan of a PT2E int8 model has no opaque op, and
    its lowering (inductor with freezing) is the int8 deploy's: oneDNN int8 conv and linear,
    the same output."""
    pytest.importorskip("torchao")
    from torch._inductor.utils import run_and_get_code

    from sparseforge.models import create_model
    from sparseforge.quant.deploy import to_int8

    torch.manual_seed(0)
    model = create_model("cnn", num_classes=10, in_channels=1).eval()
    calib = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    x = torch.randn(2, 1, 28, 28)
    fusion, code = run_and_get_code(lambda: fuse_model(to_int8(model, calib, compile=False), x))
    assert fusion.plan.opaque == []
    code = "".join(code)  # the C++ wrapper calls them through AOTInductor's C shim
    assert "aoti_torch_cpu__qconv_pointwise" in code and "aoti_torch_cpu__qlinear_pointwise" in code
    with torch.inference_mode():
        torch.testing.assert_close(fusion.module(x), to_int8(model, calib)(x))
