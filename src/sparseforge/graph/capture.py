"""Capture a model as an aten-level graph with torch.export, so that one table of op rules
covers fx-traceable models and the ones fx cannot trace (HuggingFace models, data-dependent
Python): the dependency analysis reads this graph and never runs the model again."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.fx import Node


@dataclass
class Captured:
    """An exported program with the names the analysis needs: which placeholder holds which
    parameter or buffer (by its state-dict name)."""

    program: torch.export.ExportedProgram
    tensor_names: dict[str, str]  # placeholder name -> state-dict name

    @property
    def graph(self) -> torch.fx.Graph:
        return self.program.graph

    def tensor_name(self, node: object) -> str | None:
        """The state-dict name of a parameter/buffer placeholder, else None."""
        if isinstance(node, Node) and node.op == "placeholder":
            return self.tensor_names.get(node.name)
        return None


def capture(model: nn.Module, example: Tensor | tuple, **kwargs: object) -> Captured:
    """Export `model` (non-strict, eval mode, static shapes) on `example` inputs; keyword
    arguments go to the model's forward. A model export cannot capture raises a ValueError
    that names the model and carries export's own message."""
    args = example if isinstance(example, tuple) else (example,)
    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(model, args, kwargs=dict(kwargs), strict=False)
    except Exception as err:  # export raises many types; the user needs its message
        raise ValueError(
            f"cannot capture {type(model).__name__} with torch.export: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. Structured pruning needs a model "
            "that torch.export can trace on the example input (check that forward returns "
            "tensors, and pass use_cache=False to HuggingFace decoders)"
        ) from err
    finally:
        model.train(was_training)
    sig = program.graph_signature
    names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    return Captured(program, names)


def module_path(node: Node) -> str:
    """The dotted name of the module whose forward emitted `node` ('' at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _ = list(stack.values())[-1]
    return str(path)
