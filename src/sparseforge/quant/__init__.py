"""Quantization: observers and grids (ours), simulated PTQ and QAT (ours), and the int8 CPU
deploy path (torchao's PT2E flow with the x86 inductor quantizer, compiled with freezing).
Mixed precision (a bit width per layer under a budget): `mixed_precision`, its sensitivities
and solvers. `deploy` (torchao) and `mixed_run` (matplotlib) are imported on use."""

from .config import MixedBudget, MixedConfig, QuantConfig, QuantizeConfig, QuantSpec, TensorQuant
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
from .mixed import MixedResult, apply_bits, mixed_precision
from .mixed_search import knapsack, optuna_search
from .mixed_sensitivity import hessian_sensitivity, hutchinson_trace, loss_sensitivity, round_weight
from .observers import OBSERVERS, Observer, make_observer, weight_qparams
from .ptq import calibrate, ptq

__all__ = [
    "MixedBudget", "MixedConfig", "MixedResult", "QuantizeConfig", "apply_bits",
    "hessian_sensitivity", "hutchinson_trace", "knapsack", "loss_sensitivity", "mixed_precision",
    "optuna_search", "round_weight",
    "OBSERVERS", "Observer", "QuantConfig", "QuantSpec", "TensorQuant", "WeightFakeQuant",
    "activation_quantizers", "add_activation_fake_quant", "add_weight_fake_quant", "calibrate",
    "dequantize", "fake_quantize", "fake_quantize_per_token", "make_observer", "ptq", "qparams",
    "qrange", "quantizable_layers", "quantize", "quantize_weights_",
    "remove_activation_fake_quant", "remove_weight_fake_quant", "weight_qparams",
]
