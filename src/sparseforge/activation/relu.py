"""Activation substitution (ProSparse step 1): find the activation of every FFN and replace it
with FATReLU (ReLU when the threshold is 0). Sites are found by module patterns:

- HF BERT family (BertIntermediate and its copies: RoBERTa, MiniLM, ...): `intermediate_act_fn`
  of a module that also has a `dense` projection, `y = act(x W1) W2`;
- HF LLaMA family (LlamaMLP, MistralMLP, Qwen2MLP, ...): `act_fn` of a module with
  `gate_proj`; the gate structure `(act(x Wg) * x Wu) Wd` is kept, act acts on the gate only;
- plain nn.Module FFNs: modules whose qualified name matches a user pattern, and the
  activation modules (GELU/SiLU by default) inside them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..kernels.ops import fatrelu


class FATReLU(nn.Module):
    """x if x >= threshold else 0 (Kurtz et al.'s forced-activation-threshold ReLU); threshold 0
    is ReLU. The threshold is a plain float: set it with `set_threshold`."""

    def __init__(self, threshold: float = 0.0) -> None:
        super().__init__()
        self.threshold = float(threshold)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x) if self.threshold == 0.0 else fatrelu(x, self.threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold:g}"


# Replaced inside pattern-matched FFNs; ReLU and FATReLU too, so a ReLU FFN (or a second call)
# gets FATReLU sites for thresholds and hooks.
DEFAULT_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.GELU, nn.SiLU, nn.ReLU, FATReLU)


@dataclass(frozen=True)
class ActivationSite:
    """One FFN activation: `owner.<attr>` is the activation module, `name` its qualified name."""

    name: str
    owner: nn.Module
    attr: str
    family: str  # "bert", "llama" or "pattern"

    @property
    def module(self) -> nn.Module:
        return getattr(self.owner, self.attr)


def _hf_sites(model: nn.Module) -> list[ActivationSite]:
    sites = []
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(getattr(mod, "intermediate_act_fn", None), nn.Module) and hasattr(
            mod, "dense"
        ):
            sites.append(
                ActivationSite(prefix + "intermediate_act_fn", mod, "intermediate_act_fn", "bert")
            )
        elif isinstance(getattr(mod, "act_fn", None), nn.Module) and hasattr(mod, "gate_proj"):
            sites.append(ActivationSite(prefix + "act_fn", mod, "act_fn", "llama"))
    return sites


def _pattern_sites(
    model: nn.Module, patterns: Sequence[str], activations: tuple[type[nn.Module], ...]
) -> list[ActivationSite]:
    modules = dict(model.named_modules())
    found: dict[str, ActivationSite] = {}
    for name, mod in modules.items():
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        inner = (
            [(name, mod)]
            if isinstance(mod, activations)
            else [
                (f"{name}.{sub}" if name else sub, m)
                for sub, m in mod.named_modules()
                if sub and isinstance(m, activations)
            ]
        )
        for qual, _ in inner:
            parent, _, attr = qual.rpartition(".")
            found.setdefault(qual, ActivationSite(qual, modules[parent], attr, "pattern"))
    return list(found.values())


def find_activation_sites(
    model: nn.Module,
    patterns: Sequence[str] | None = None,
    activations: tuple[type[nn.Module], ...] = DEFAULT_ACTIVATIONS,
) -> list[ActivationSite]:
    """FFN activation sites in model order. Without `patterns`, HF BERT/LLaMA-family modules;
    with `patterns` (fnmatch on qualified module names, e.g. `blocks.*.mlp`), the modules of
    the `activations` types at or inside the matching modules. Raises if none is found."""
    if isinstance(patterns, str):
        raise TypeError(f"patterns must be a list of name patterns, got the string {patterns!r}")
    sites = _hf_sites(model) if patterns is None else _pattern_sites(model, patterns, activations)
    if not sites:
        kinds = ", ".join(t.__name__ for t in activations)
        searched = (
            "HF BERT-family `*.intermediate_act_fn` (BertIntermediate) and LLaMA-family "
            "`*.act_fn` next to a `gate_proj` (LlamaMLP)"
            if patterns is None
            else f"modules matching {list(patterns)} that are or contain {kinds}"
        )
        hint = (
            "; for a plain model pass patterns naming its FFN modules, "
            "e.g. patterns=['blocks.*.mlp']"
            if patterns is None
            else "; check the names with `[n for n, _ in model.named_modules()]`"
        )
        raise ValueError(
            f"no FFN activation site found in {type(model).__name__}: searched for {searched}{hint}"
        )
    return sites


def substitute_activations(
    model: nn.Module,
    patterns: Sequence[str] | None = None,
    *,
    threshold: float = 0.0,
    activations: tuple[type[nn.Module], ...] = DEFAULT_ACTIVATIONS,
) -> list[str]:
    """Replace every FFN activation found by `find_activation_sites` with `FATReLU(threshold)`
    in place; returns the qualified names of the replaced sites."""
    sites = find_activation_sites(model, patterns, activations)
    for site in sites:
        setattr(site.owner, site.attr, FATReLU(threshold))
    return [site.name for site in sites]


def fatrelu_modules(model: nn.Module) -> dict[str, FATReLU]:
    """Every FATReLU in `model` by qualified name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FATReLU)}


def set_threshold(modules: Sequence[FATReLU] | dict[str, FATReLU], threshold: float) -> None:
    """Set one threshold on the given FATReLU modules."""
    if threshold < 0:
        raise ValueError(f"a FATReLU threshold must be >= 0, got {threshold}")
    for m in modules.values() if isinstance(modules, dict) else modules:
        m.threshold = float(threshold)
