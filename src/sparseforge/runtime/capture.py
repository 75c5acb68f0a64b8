"""The real input of every layer for one example batch, caught with forward hooks, so kernels
are timed and checked on the shapes (and values) the model really feeds them."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def capture_inputs(model: nn.Module, example_input: Tensor, names: Iterable[str]) -> dict[str, Tensor]:
    """{layer name: a copy of its first positional input} for the named submodules that one
    forward of `example_input` calls (eval, no_grad); a layer called twice keeps its first call."""
    captured: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, inputs: tuple[object, ...]) -> None:
            if name not in captured and inputs and isinstance(inputs[0], Tensor):
                captured[name] = inputs[0].detach().clone()

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return captured
