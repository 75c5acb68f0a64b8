"""Quantization: observers and grids (ours), simulated PTQ and QAT (ours), and the int8 CPU
deploy path (torchao's PT2E flow with the x86 inductor quantizer, compiled with freezing).
`deploy` is imported on use: it pulls in torchao."""

from .config import QuantConfig, QuantSpec, TensorQuant
from .grid import dequantize, fake_quantize, fake_quantize_per_token, qparams, qrange, quantize
from .layers import (
    WeightFakeQuant,
    activation_quantizers,
    add_activation_fake_quant,
    add_weight_fake_quant,
    quantizable_layers,
    quantize_weights_,
    remove_activation_fake_quant,
    remove_weight_fake_quant,
)
from .observers import OBSERVERS, Observer, make_observer, weight_qparams
from .ptq import calibrate, ptq

__all__ = [
    "OBSERVERS", "Observer", "QuantConfig", "QuantSpec", "TensorQuant", "WeightFakeQuant",
    "activation_quantizers", "add_activation_fake_quant", "add_weight_fake_quant", "calibrate",
    "dequantize", "fake_quantize", "fake_quantize_per_token", "make_observer", "ptq", "qparams",
    "qrange", "quantizable_layers", "quantize", "quantize_weights_",
    "remove_activation_fake_quant", "remove_weight_fake_quant", "weight_qparams",
]
