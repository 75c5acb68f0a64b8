"""Quantization-aware training: from `start_epoch`, every selected layer's weight reads as its
fake-quantized value (straight-through gradients) and, if configured, its input is
fake-quantized with a moving-average observer (which observes from the first training step,
so it is warm when quantization starts). Composes with the pruning modifiers: the
fake quantization sits after the layer's mask, so the masked weight is what gets quantized
and pruned weights stay exactly zero. After the last epoch the weights are written onto their
grid and the weight fake quantization comes off; the activation quantizers stay on the model
(frozen), so the run's test accuracy is the quantized model's."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..quant.config import QuantSpec, TensorQuant
from ..quant.layers import (
    add_activation_fake_quant,
    add_weight_fake_quant,
    quantizable_layers,
    remove_weight_fake_quant,
)
from ..sparsity import apply_mask, get_mask
from .base import Modifier, register_modifier


class QATConfig(QuantSpec):
    type: Literal["qat"] = "qat"
    start_epoch: float = Field(0.0, ge=0.0)
    activations: TensorQuant | None = TensorQuant(
        symmetric=False, granularity="per_tensor", observer="moving_average"
    )


@register_modifier("qat", QATConfig)
class QuantizationAware(Modifier):
    def __init__(self, config: QATConfig, session) -> None:
        super().__init__(config, session)
        self.layers = quantizable_layers(session.model, config)
        self.start = session.steps(config.start_epoch)
        self.end_epoch = session.recipe.train.epochs
        for module in self.layers.values():
            # an all-kept mask first, so a pruning modifier's mask is that one (index 0 in
            # state dicts, resumes alike) and the fake quantization always comes after it
            if get_mask(module) is None:
                apply_mask(module, torch.ones_like(module.weight, dtype=torch.bool))
        self.weights = {n: add_weight_fake_quant(m, config.weights) for n, m in self.layers.items()}
        self.inputs = {}
        if config.activations is not None:
            self.inputs = {n: add_activation_fake_quant(m, config.activations)
                           for n, m in self.layers.items()}
        self.finished = False
        self._set_active(self.start == 0)

    def _set_active(self, on: bool) -> None:
        self.active = on
        for fq in self.weights.values():
            fq.enabled = on
        for quantizer in self.inputs.values():
            quantizer.observe_in_training = not self.finished  # warm before the start
            quantizer.quantizing = on

    def on_step(self, session) -> None:
        if not self.active and session.global_step >= self.start:
            self._set_active(True)

    def on_epoch_end(self, session) -> None:
        if session.epoch >= self.end_epoch and not self.finished:
            self._finish()

    def _finish(self) -> None:
        self._set_active(True)
        for module in self.layers.values():
            remove_weight_fake_quant(module)  # the weight stays on its grid
        self.finished = True
        for quantizer in self.inputs.values():
            quantizer.observe_in_training = False

    def metrics(self) -> dict[str, float]:
        return {"quantized": float(self.active)}

    def state_dict(self) -> dict:
        return {
            "active": self.active, "finished": self.finished,
            "observers": {n: q.observer.state_dict() for n, q in self.inputs.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        for name, observer_state in state["observers"].items():
            self.inputs[name].observer.load_state_dict(observer_state)
        self._set_active(bool(state["active"]))
        if state["finished"]:
            self._finish()
