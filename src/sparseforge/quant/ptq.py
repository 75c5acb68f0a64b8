"""Post-training quantization, simulated: snap weights onto their grid and calibrate the
activation quantizers on a few batches; the result runs in fp32 with every value on its grid,
so its accuracy is the quantized model's (the int8 kernels are `deploy.to_int8`)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .config import QuantConfig
from .layers import (
    ActivationFakeQuant,
    add_activation_fake_quant,
    quantizable_layers,
    quantize_weights_,
)


def _inputs(batch: Tensor | tuple | list) -> Tensor:
    """The model input of a batch: a tensor, or the first item of (x, y)."""
    return batch if isinstance(batch, Tensor) else batch[0]


@torch.no_grad()
def calibrate(
    model: nn.Module, batches: Iterable, config: QuantConfig,
    layers: dict[str, nn.Module] | None = None,
) -> dict[str, ActivationFakeQuant]:
    """Attach activation quantizers to `layers` (default: the config's selection), observe
    `config.calibration_batches` batches in eval mode, and switch them to quantizing.
    Returns {layer name: quantizer}; none when `config.activations` is None."""
    if config.activations is None:
        return {}
    layers = quantizable_layers(model, config) if layers is None else layers
    quantizers = {n: add_activation_fake_quant(m, config.activations) for n, m in layers.items()}
    static = config.activations.granularity != "per_token"
    if static:
        was_training = model.training
        model.eval()
        for q in quantizers.values():
            q.calibrating = True
        device = next(model.parameters()).device
        seen = 0
        for batch in itertools.islice(batches, config.calibration_batches):
            model(_inputs(batch).to(device))
            seen += 1
        model.train(was_training)
        if seen == 0:
            raise ValueError("calibration got no batches: pass a loader or a list of inputs")
    for q in quantizers.values():
        q.calibrating = False
        q.quantizing = True
    return quantizers


def ptq(model: nn.Module, batches: Iterable, config: QuantConfig | None = None) -> nn.Module:
    """A fake-quantized copy of `model`: weights snapped per `config.weights` (masked weights
    quantized as masked, zeros kept), then activations calibrated on `batches` (tensors or
    (x, y) pairs). The original model is left untouched."""
    config = config or QuantConfig()
    quantized = copy.deepcopy(model)
    layers = quantizable_layers(quantized, config)
    quantize_weights_(layers, config.weights)
    calibrate(quantized, batches, config, layers)
    return quantized
