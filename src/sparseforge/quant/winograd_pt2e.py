"""Our int8 Winograd op in torchao's PT2E flow: `WinogradInputQuantizer` annotates the op's
input with the X86 quantizer's uint8 activation spec. The op's own int8 codes are of its
Winograd-domain V, so PT2E would otherwise leave its input float32; annotated, the input gets
quantize -> dequantize like a oneDNN conv's, which the fusion planner (graph.lower) then folds
into the op: it reads the uint8 tensor, and the op before it writes uint8."""

from __future__ import annotations

from torch import fx
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer
from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86


def is_winograd(node: fx.Node) -> bool:
    """Whether `node` calls `sparseforge::winograd_int8_conv2d`."""
    schema = getattr(node.target, "_schema", None)
    return schema is not None and schema.name == "sparseforge::winograd_int8_conv2d"


class WinogradInputQuantizer(Quantizer):
    """Annotates the input (x) of every Winograd op; compose it after the X86InductorQuantizer
    (`quant.deploy.to_int8(..., fuse=True)` does; plain `to_int8` leaves the input float32)."""

    def annotate(self, model: fx.GraphModule) -> fx.GraphModule:
        spec = x86.get_default_x86_inductor_quantization_config().input_activation
        for node in model.graph.nodes:
            if is_winograd(node):
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: spec}, _annotated=True)
        return model

    def validate(self, model: fx.GraphModule) -> None:
        pass
