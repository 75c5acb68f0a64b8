"""int8 inference on CPU through torchao. `to_int8`: torchao's PT2E flow with the
X86InductorQuantizer (uint8 per-tensor activations, int8 per-channel symmetric weights,
calibrated), compiled by inductor with `freezing=True`, which is what lowers the q/dq pattern
to oneDNN int8 conv/linear with fused post-ops; without freezing the graph runs dequantize +
fp32 kernels and was measured 16x slower than fp32. `to_int8_dynamic`: torchao's `quantize_`
with int8 dynamic activations and int8 weights, for linear layers only. Both bake pruning
masks first: pruned weights quantize to exactly 0."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable

import torch
import torch._inductor.config
from torch import Tensor, nn

from ..sparsity import bake_masks
from .ptq import _inputs

# Inductor settings of every int8 compile here. `freezing` folds the weights into constants,
# which the int8 lowering passes need. It must be in inductor's global config while compiling:
# `torch.compile(options={"freezing": True})` is not seen by the passes that prepack int8
# weights (compiling fails). The test suite checks the lowered code. The options are passed
# too, so the backend differs from a plain torch.compile of the same module, whose compiled
# graph Dynamo would otherwise reuse unfrozen.
INDUCTOR_CONFIG = {"freezing": True}


class FrozenCompiled(nn.Module):
    """`torch.compile(module)` (static shapes, one graph per batch size) whose every call, so
    every recompile for a new batch size, runs with `INDUCTOR_CONFIG` (and `extra` inductor
    settings) in effect."""

    def __init__(self, module: nn.Module, extra: dict | None = None) -> None:
        super().__init__()
        self.config = INDUCTOR_CONFIG | (extra or {})
        self.compiled = torch.compile(module, dynamic=False, options=self.config)

    def forward(self, *args: Tensor) -> Tensor:
        with torch._inductor.config.patch(self.config):
            return self.compiled(*args)


def compile_frozen(model: nn.Module, cpp_wrapper: bool = False) -> nn.Module:
    """`model` compiled by inductor with freezing (see `FrozenCompiled`); `cpp_wrapper`: the
    kernels are called from generated C++ instead of Python."""
    return FrozenCompiled(model, {"cpp_wrapper": True} if cpp_wrapper else None)


def _plain_copy(model: nn.Module) -> nn.Module:
    return bake_masks(copy.deepcopy(model)).eval()


class PlannedPerShape(nn.Module):
    """An int8 graph lowered by the fusion planner (`graph.lower.fuse_model`, with freezing),
    once per input shape (a lowering is for static shapes, as torch.compile with
    dynamic=False compiles once per shape): our kernels take the quantize / dequantize around
    them, the rest goes to TorchInductor as in `compile_frozen`."""

    def __init__(self, converted: nn.Module) -> None:
        super().__init__()
        self.converted = converted
        self.lowered: dict[tuple[int, ...], Callable[[Tensor], Tensor]] = {}

    def forward(self, x: Tensor) -> Tensor:
        from ..graph.lower import fuse_model  # imported here: graph imports this package

        shape = tuple(x.shape)
        if shape not in self.lowered:
            self.lowered[shape] = fuse_model(self.converted, x, freezing=True).module
        return self.lowered[shape](x)


def to_int8(
    model: nn.Module, example_batches: Iterable, *, calibration_batches: int = 16,
    compile: bool = True, fuse: bool = False,
) -> nn.Module:
    """An int8 copy of `model` for CPU inference: export (batch dim dynamic), prepare with the
    X86InductorQuantizer, calibrate on up to `calibration_batches` of `example_batches`
    (tensors or (x, y) pairs; the first must have batch size > 1), convert, and compile with
    freezing. `fuse=True` also quantizes the input of our Winograd op (`WinogradInputQuantizer`)
    and lowers through the fusion planner instead (`PlannedPerShape`), which folds the
    quantize / dequantize around the op into it; `compile=False` returns the converted (q/dq
    reference) graph module (with `fuse=True`, the one the planner would lower)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    plain = _plain_copy(model)
    batches = [_inputs(b) for b in itertools.islice(example_batches, calibration_batches)]
    if not batches:
        raise ValueError("to_int8 needs at least one example batch to export and calibrate on")
    example: Tensor = batches[0]
    if example.shape[0] < 2:
        raise ValueError("the first example batch must hold at least 2 inputs, so the exported "
                         "graph keeps the batch size dynamic")
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        exported = torch.export.export(plain, (example,), dynamic_shapes=({0: batch},)).module()
        _true_module_classes(exported, plain)
        _separate_module_calls(exported)
        prepared = prepare_pt2e(exported, _quantizer(exported, winograd_uint8=fuse))
        for x in batches:
            prepared(x)
        converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)  # so `.eval()` (e.g. in `evaluate`) works
    if not compile:
        return converted
    return PlannedPerShape(converted) if fuse else compile_frozen(converted)


def _quantizer(gm: torch.fx.GraphModule, winograd_uint8: bool):
    """The X86InductorQuantizer (default config); with `winograd_uint8`, for a graph holding
    our int8 Winograd op, composed with `WinogradInputQuantizer`, so the op's inputs become
    uint8 too. Only worth it where the planner folds those quantize / dequantize pairs into the
    op: left as kernels of their own, they made ResNet-18 4-11% slower (AMD EPYC, batch 1 and
    8)."""
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    from .winograd_pt2e import WinogradInputQuantizer, is_winograd

    x86_quantizer = x86.X86InductorQuantizer()
    x86_quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    if not (winograd_uint8 and any(is_winograd(n) for n in gm.graph.nodes)):
        return x86_quantizer
    return ComposableQuantizer([x86_quantizer, WinogradInputQuantizer()])


def _true_module_classes(gm: torch.fx.GraphModule, model: nn.Module) -> None:
    """Set each node's `nn_module_stack` classes to the modules `model` holds now. Exporting an
    fx GraphModule (BatchNorm folded by `graph.fuse`) keeps the stack recorded when it was
    traced, so a conv swapped afterwards for one of our modules (e.g. `WinogradConv2d`) still
    read as nn.Conv2d, and the X86InductorQuantizer tried to annotate our op as a conv."""
    def qualname(cls: type | str) -> str:  # export records the class as a name or a type
        return cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"

    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        for key, (fqn, cls) in list(stack.items()):
            try:
                true_cls = type(model.get_submodule(fqn))
            except AttributeError:
                continue
            if qualname(cls) != qualname(true_cls):
                stack[key] = (fqn, qualname(true_cls) if isinstance(cls, str) else true_cls)


def _separate_module_calls(gm: torch.fx.GraphModule) -> None:
    """Give each call of a module called twice its own name in the nodes' `nn_module_stack`.
    torch's source partitioning (which the X86InductorQuantizer matches patterns on) groups
    nodes by the innermost module's name, so torchvision's BasicBlock, which calls `self.relu`
    twice, became one partition with two outputs and `prepare_pt2e` failed."""
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or not stack:
            continue
        key, (fqn, cls) = next(reversed(stack.items()))
        if "@" in key:  # export marks the k-th repeated call of a module "name@k"
            stack[key] = (f"{fqn}@{key.rsplit('@', 1)[1]}", cls)


def to_int8_dynamic(model: nn.Module, *, compile: bool = True) -> nn.Module:
    """An int8 copy through torchao's `quantize_` (int8 dynamic per-token activations, int8
    per-channel weights): linear layers only, convolutions stay fp32."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    plain = _plain_copy(model)
    quantize_(plain, Int8DynamicActivationInt8WeightConfig())
    return compile_frozen(plain) if compile else plain
