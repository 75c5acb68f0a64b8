"""GaP, scheduled grow-and-prune (Ma et al. 2022), cyclic variant: start from a random sparse
model; in turn, each partition of the layers grows dense (regrown weights start at zero),
trains for `period` epochs and is pruned back to s by magnitude; from `final_prune_epoch` on
the whole model is held at s (fine-tuning). No dense pretraining is needed."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ..sparsity import apply_mask, compute_masks, get_mask, select_layers
from ..sparsity.mutation import erk_densities
from ..sparsity.spec import name_matches
from .base import Modifier, register_modifier
from .pruning import MaskedLayers, PruningConfig, _weight_param


class GaPConfig(PruningConfig):
    type: Literal["gap"] = "gap"
    partitions: int = Field(4, ge=1, description="K contiguous groups of layers in depth order")
    groups: list[list[str]] | None = Field(
        None, description="explicit partitions: a list of groups of layer-name patterns"
    )
    period: float = Field(1.0, gt=0.0, description="epochs each partition stays dense (T)")
    finetune_epochs: float = Field(1.0, ge=0.0, description="epochs held at s at the end")
    final_prune_epoch: float | None = Field(
        None, gt=0.0, description="epoch of the final prune (default: epochs - finetune_epochs)"
    )
    distribution: Literal["uniform", "erk"] = Field(
        "uniform",
        description="erk: per-layer sparsity by Erdős–Rényi-Kernel (as RigL/MEST); with "
        "allocation: global only for the random start",
    )

    @model_validator(mode="after")
    def _consistent(self) -> GaPConfig:
        if self.groups is not None:
            if not self.groups or any(not g for g in self.groups):
                raise ValueError("`groups` must be a non-empty list of non-empty pattern lists")
            if "partitions" in self.model_fields_set and self.partitions != len(self.groups):
                raise ValueError(
                    f"partitions = {self.partitions} but {len(self.groups)} groups are given; "
                    "drop `partitions` (the groups define them)"
                )
        if {"final_prune_epoch", "finetune_epochs"} <= self.model_fields_set:
            raise ValueError(
                "set either final_prune_epoch or finetune_epochs (the final prune happens at "
                "train.epochs - finetune_epochs), not both"
            )
        return self


def contiguous_partitions(names: list[str], k: int) -> list[list[str]]:
    """Split layers (in depth order) into k contiguous groups whose sizes differ by at most one."""
    if k > len(names):
        raise ValueError(
            f"partitions = {k} but only {len(names)} layers are selected; use at most "
            f"{len(names)} partitions"
        )
    size, extra = divmod(len(names), k)
    out, start = [], 0
    for p in range(k):
        end = start + size + (p < extra)
        out.append(names[start:end])
        start = end
    return out


def match_groups(names: list[str], groups: list[list[str]]) -> list[list[str]]:
    """The layers of each explicit group; every selected layer must fall in exactly one group."""
    out: list[list[str]] = [[] for _ in groups]
    for n in names:
        hits = [i for i, g in enumerate(groups) if any(name_matches(n, p) for p in g)]
        if len(hits) != 1:
            where = "no group" if not hits else f"groups {hits}"
            raise ValueError(
                f"layer '{n}' matches {where}; every pruned layer must match exactly one GaP "
                "group (add it to one, or exclude it with `layers: {exclude: [...]}`)"
            )
        out[hits[0]].append(n)
    empty = [i for i, g in enumerate(out) if not g]
    if empty:
        raise ValueError(
            f"GaP groups {empty} match no selected layer; selected: {', '.join(names)}"
        )
    return out


@register_modifier("gap", GaPConfig)
class GrowAndPrune(Modifier):
    """Cyclic GaP: phase i (steps [i*T, (i+1)*T)) holds partition i mod K dense, the rest at s."""

    def __init__(self, config: GaPConfig, session) -> None:
        super().__init__(config, session)
        layers = select_layers(session.model, config)
        self.owned = MaskedLayers(layers, config)
        names = list(layers)
        self.partitions = (
            match_groups(names, config.groups)
            if config.groups is not None
            else contiguous_partitions(names, config.partitions)
        )
        self.period = max(1, session.steps(config.period))
        epochs = session.recipe.train.epochs
        final = config.final_prune_epoch
        if final is None:
            final = epochs - config.finetune_epochs
        if final <= 0 or final > epochs:
            raise ValueError(
                f"the final GaP prune falls at epoch {final:g}, outside (0, train.epochs = "
                f"{epochs}]; raise train.epochs or lower finetune_epochs / final_prune_epoch"
            )
        self.final_step = session.steps(final)
        phases = math.ceil(self.final_step / self.period)
        if phases < len(self.partitions):
            raise ValueError(
                f"GaP has {phases} grow phases of {config.period:g} epochs before epoch "
                f"{final:g}, fewer than its {len(self.partitions)} partitions, so some would "
                "never grow; lower `period` or `partitions`, or train longer"
            )
        self.erk_targets = _erk_targets(layers, config) if config.distribution == "erk" else None
        self.phase = 0  # index of the current grow phase; its partition is phase mod K
        self.grown: int | None = None  # the partition now dense; None once fine-tuning

    def on_start(self, session) -> None:
        random_spec = self.config.model_copy(update={"criterion": "random"})
        for n, mask in self._masks(self.owned.layers, random_spec, None, session).items():
            apply_mask(self.owned.layers[n], mask)
        self._grow(0, session)
        session.masks_changed()

    def on_step(self, session) -> None:
        self.owned.observe_gradients()
        if self.grown is None:
            return
        step = session.global_step
        if step >= self.final_step:
            self._prune_back(session)
            self.grown = None
        elif step >= (self.phase + 1) * self.period:
            self._prune_back(session)
            self.phase += 1
            self._grow(self.phase % len(self.partitions), session)
        else:
            return
        session.masks_changed()

    def _grow(self, index: int, session) -> None:
        """Make partition `index` dense; its pruned weights (and their optimizer state, e.g.
        momentum still decaying) restart at zero."""
        for name in self.partitions[index]:
            module = self.owned.layers[name]
            mask = get_mask(module)
            _zero_optimizer_state(session.optimizer, _weight_param(module), mask)
            with torch.no_grad():
                _weight_param(module).mul_(mask.to(module.weight.dtype))
            apply_mask(module, torch.ones_like(mask))
        for acc in self.owned.taylor.values():
            acc.reset()
        self.grown = index

    def _prune_back(self, session) -> None:
        """Prune the grown partition back to s with the configured scheme and criterion. With
        `allocation: global` its weights are ranked together with every kept weight of the
        model (one threshold), so layers whose weights lose the ranking give up weights too and
        the per-layer sparsity is learned rather than fixed."""
        if self.config.allocation == "global":
            layers = self.owned.layers
            stats = {n: acc.value() for n, acc in self.owned.taylor.items()}
            target = self.config.final_sparsity
            masks = compute_masks(layers, self.config, target, stats, session.generator)
        else:
            layers = {n: self.owned.layers[n] for n in self.partitions[self.grown]}
            stats = {n: self.owned.taylor[n].value() for n in layers if n in self.owned.taylor}
            masks = self._masks(layers, self.config, stats, session)
        for n, mask in masks.items():
            apply_mask(layers[n], mask & get_mask(layers[n]))

    def _masks(self, layers: dict[str, nn.Module], spec, stats, session) -> dict[str, Tensor]:
        """Masks at the target: one call over `layers` (uniform, or global allocation), or
        layer by layer at each layer's ERK sparsity."""
        if self.erk_targets is None:
            target = self.config.final_sparsity
            return compute_masks(layers, spec, target, stats, session.generator)
        return {
            n: compute_masks({n: m}, spec, self.erk_targets[n], stats, session.generator)[n]
            for n, m in layers.items()
        }

    def metrics(self) -> dict[str, float]:
        return {
            "gap_partition": -1.0 if self.grown is None else float(self.grown),
            "gap_phase": float(self.phase),
            "target_sparsity": self.config.final_sparsity,
        }

    def state_dict(self) -> dict:
        return {"phase": self.phase, "grown": self.grown}

    def load_state_dict(self, state: dict) -> None:
        grown = state["grown"]
        if grown is not None and not 0 <= grown < len(self.partitions):
            raise ValueError(
                f"checkpoint's GaP partition {grown} does not exist ({len(self.partitions)} "
                "partitions): resume with the recipe the run started with"
            )
        self.phase = int(state["phase"])
        self.grown = None if grown is None else int(grown)


def _erk_targets(layers: dict[str, nn.Module], config: GaPConfig) -> dict[str, float]:
    """Per-layer sparsity from ERK at the model's target; overrides keep their own."""
    fixed = {
        n: o.sparsity for o in config.overrides for n in layers
        if any(name_matches(n, p) for p in o.layers)
    }
    shapes = {n: tuple(m.weight.shape) for n, m in layers.items()}
    densities = erk_densities(shapes, 1.0 - config.final_sparsity, fixed)
    return {n: 1.0 - d for n, d in densities.items()}


def _zero_optimizer_state(
    optimizer: torch.optim.Optimizer | None, param: nn.Parameter, keep: Tensor
) -> None:
    """Zero the per-weight optimizer state (momentum, Adam moments) where `keep` is False."""
    if optimizer is None:
        return
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.mul_(keep.to(value.dtype))
