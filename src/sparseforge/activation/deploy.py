"""Deploy an activation-sparse model: swap each FFN whose activation is a FATReLU for the module
that skips the zeros it leaves (kernels/activation_sparse.py). LLaMA-family MLPs become one
`ReluGatedFFN` (gate dense, up and down only for live neurons); in BERT-family layers and in
plain `Sequential(fc1, FATReLU, fc2)` FFNs the down projection becomes a `SparseInputLinear`.
Outputs are unchanged (the kernels equal their dense references)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..kernels.activation_sparse import ReluGatedFFN, SparseInputLinear
from .relu import FATReLU


@dataclass
class ActivationDeploy:
    """What `deploy_activation_sparse` changed (qualified module names) and what it left."""

    replaced: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)  # FATReLU site -> why its FFN stayed


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, attr = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


def _gated(model: nn.Module, owner_name: str, owner: nn.Module, act: FATReLU, out: ActivationDeploy) -> None:
    linears = [getattr(owner, a, None) for a in ("gate_proj", "up_proj", "down_proj")]
    if not all(isinstance(m, nn.Linear) and m.bias is None for m in linears):
        out.left[f"{owner_name}.act_fn"] = "gate_proj/up_proj/down_proj are not bias-free nn.Linear"
        return
    parent, attr = _parent(model, owner_name)
    setattr(parent, attr, ReluGatedFFN.from_linears(*linears, threshold=act.threshold))
    out.replaced.append(owner_name)


def _down_projection(model: nn.Module, layer_name: str, out: ActivationDeploy, site: str) -> None:
    name = f"{layer_name}.output.dense" if layer_name else "output.dense"
    try:
        dense = model.get_submodule(name)
    except AttributeError:
        out.left[site] = f"no {name} after it (expected a BERT-family layer)"
        return
    if not isinstance(dense, nn.Linear):
        out.left[site] = f"{name} is {type(dense).__name__}, not nn.Linear"
        return
    parent, attr = _parent(model, name)
    setattr(parent, attr, SparseInputLinear.from_linear(dense))
    out.replaced.append(name)


def deploy_activation_sparse(model: nn.Module) -> ActivationDeploy:
    """In place, for inference: every FATReLU FFN site of `model` (after ProSparse) gets the
    zero-skipping module for its family. Returns what changed and what stayed dense, and why."""
    out = ActivationDeploy()
    sites = [(n, m) for n, m in model.named_modules() if isinstance(m, FATReLU)]
    if not sites:
        raise ValueError(f"{type(model).__name__} has no FATReLU: run ProSparse "
                         "(activation.substitute_activations) before deploying")
    modules = dict(model.named_modules())
    for name, act in sites:
        owner_name, _, attr = name.rpartition(".")
        owner = modules[owner_name] if owner_name else model
        if attr == "act_fn" and hasattr(owner, "gate_proj"):
            _gated(model, owner_name, owner, act, out)
        elif attr == "intermediate_act_fn":  # BERT: layer.intermediate.act -> layer.output.dense
            _down_projection(model, owner_name.rpartition(".")[0], out, name)
        elif isinstance(owner, nn.Sequential) and attr.isdigit() and int(attr) + 1 < len(owner) \
                and isinstance(owner[int(attr) + 1], nn.Linear):
            owner[int(attr) + 1] = SparseInputLinear.from_linear(owner[int(attr) + 1])
            out.replaced.append(f"{owner_name}.{int(attr) + 1}" if owner_name else str(int(attr) + 1))
        else:
            out.left[name] = "no linear directly after it (need Sequential(fc1, FATReLU, fc2), a " \
                             "BERT-family or a LLaMA-family FFN)"
    return out
