"""Mixed-precision weights: a bit width per layer, chosen under a budget. Sensitivities per
layer and width (mixed_sensitivity), the exact dp solver or Optuna (mixed_search), and a
Pareto front of candidates scored on the validation split, never on the calibration data."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..sparsity import bake_masks
from .config import MixedConfig, QuantSpec, TensorQuant
from .layers import quantizable_layers
from .mixed_search import knapsack, optuna_search, pareto_points
from .mixed_sensitivity import (
    Batches,
    hessian_sensitivity,
    loss_sensitivity,
    round_weight,
    weight_bytes,
)


@torch.no_grad()
def apply_bits(model: nn.Module, assignment: Mapping[str, int], spec: TensorQuant) -> nn.Module:
    """A copy of `model` (pruning masks baked, eval mode) with each named layer's weight
    rounded to its assigned width (see `round_weight`); layers not named stay fp32."""
    out = bake_masks(copy.deepcopy(model)).eval()
    for name, bits in assignment.items():
        weight = out.get_submodule(name).weight
        weight.copy_(round_weight(weight.detach(), bits, spec))
    return out


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset, batch_size: int = 1000) -> float:
    """Top-1 accuracy in percent of `model` (eval mode) on a tensor dataset."""
    if len(data.tensors[1]) == 0:
        raise ValueError("accuracy needs a non-empty split (the validation split is empty: "
                         "set data.val_fraction > 0 in the run's recipe)")
    from ..evaluate import evaluate

    return 100.0 * evaluate(model.eval(), data, batch_size)[1]


@dataclass
class MixedResult:
    """The chosen width per layer and how it was chosen. `candidates`: assignments scored on
    the validation split (source dp-front / dp / optuna), each with weight bytes,
    predicted sensitivity and validation accuracy; `int8_bytes`: uniform int8 weights."""

    assignment: dict[str, int]
    weight_bytes: float
    int8_bytes: float
    fp32_bytes: float
    val_accuracy: float
    fp32_val_accuracy: float
    sensitivity: dict[str, dict[int, float]]
    costs: dict[str, dict[int, float]]
    candidates: list[dict[str, Any]] = field(default_factory=list)
    solver: str = "dp"
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        def keyed(d: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
            return {n: {str(b): v for b, v in per.items()} for n, per in d.items()}

        return {**{k: getattr(self, k) for k in (
            "assignment", "weight_bytes", "int8_bytes", "fp32_bytes", "val_accuracy",
            "fp32_val_accuracy", "candidates", "solver", "note")},
            "sensitivity": keyed(self.sensitivity), "costs": keyed(self.costs)}


def _sensitivities(model: nn.Module, layers: dict[str, nn.Module], batches: Batches,
                   spec: TensorQuant, config: MixedConfig) -> dict[str, dict[int, float]]:
    if config.criterion == "hessian":
        return hessian_sensitivity(model, layers, batches, config.bits, spec,
                                   samples=config.hessian_samples, seed=config.seed)
    return loss_sensitivity(model, layers, batches, config.bits, spec)


def mixed_precision(
    model: nn.Module, calibration: Batches, validation: TensorDataset, spec: QuantSpec,
    config: MixedConfig,
) -> MixedResult:
    """Choose a weight width per layer of `spec.layers` from `config.bits`: sensitivities on
    `calibration` ((x, y) batches), then the dp optimum (or Optuna) under `config.budget`;
    every candidate's accuracy is measured on `validation`. `model` is left untouched."""
    base = bake_masks(copy.deepcopy(model)).eval()
    layers = quantizable_layers(base, spec)
    names, bits = list(layers), list(config.bits)
    w = spec.weights
    sens = _sensitivities(base, layers, calibration, w, config)
    costs = {n: {b: weight_bytes(m.weight, b, w) for b in bits} for n, m in layers.items()}
    int8 = sum(weight_bytes(m.weight, 8, w) for m in layers.values())
    fp32 = sum(weight_bytes(m.weight, 32, w) for m in layers.values())
    fp32_acc = accuracy(base, validation)
    scored: dict[tuple[int, ...], dict[str, Any]] = {}

    def as_assignment(choices: list[int] | tuple[int, ...]) -> dict[str, int]:
        return {n: bits[k] for n, k in zip(names, choices, strict=True)}

    def cost_of(choices: list[int] | tuple[int, ...]) -> float:
        return sum(costs[n][bits[k]] for n, k in zip(names, choices, strict=True))

    def score(choices: list[int] | tuple[int, ...], source: str) -> float:
        key = tuple(choices)
        if key not in scored:
            assignment = as_assignment(key)
            scored[key] = {
                "source": source, "assignment": assignment, "weight_bytes": cost_of(key),
                "sensitivity": sum(sens[n][b] for n, b in assignment.items()),
                "val_accuracy": accuracy(apply_bits(base, assignment, w), validation)}
        return scored[key]["val_accuracy"]

    table = knapsack([[costs[n][b] for b in bits] for n in names],
                     [[sens[n][b] for b in bits] for n in names],
                     unit=max(fp32, 1.0) / config.resolution)
    front = table.pareto()
    step = max(1, len(front) // config.candidates)
    for c in front[::step] + front[-1:]:  # an even spread of the front, scored for the plot
        score(table.choices_at(c), "dp-front")

    budget = config.budget
    note = ("sensitivities assumed additive across layers (the dp optimum is exact under "
            "that assumption); candidates scored on the validation split")
    if budget.weight_bytes is not None:
        max_bytes = budget.weight_bytes * int8
        pick = table.min_value(max_bytes)
        if pick is None:
            raise ValueError(f"no assignment of bits {bits} fits {budget.weight_bytes:g} x the "
                             "int8 weight bytes; raise mixed.budget.weight_bytes or add 4 to bits")
        score(pick, "dp")
        scored[tuple(pick)]["source"] = "dp"  # the dp optimum, even if also a front point
        found = _optuna(config, names, bits, cost_of, score, pick, max_cost=max_bytes)
        chosen = found if found is not None else pick
    else:
        floor = fp32_acc - budget.accuracy_drop
        # Smallest front point within the drop, by real validation accuracy.
        ok = [s for s in scored.values() if s["val_accuracy"] >= floor]
        pick = min(ok, key=lambda s: s["weight_bytes"]) if ok else None
        if pick is not None:
            pick["source"] = "dp"
        widest = [bits.index(max(bits))] * len(names)
        start = [bits.index(pick["assignment"][n]) for n in names] if pick else widest
        found = _optuna(config, names, bits, cost_of, score, start, min_score=floor)
        chosen = found if found is not None else start
        if pick is None and found is None:
            note += "; nothing met the accuracy budget, so the widest assignment was kept"
    entry = scored[tuple(chosen)] if tuple(chosen) in scored else None
    if entry is None:
        score(chosen, config.solver)
        entry = scored[tuple(chosen)]
    return MixedResult(
        assignment=entry["assignment"], weight_bytes=entry["weight_bytes"], int8_bytes=int8,
        fp32_bytes=fp32, val_accuracy=entry["val_accuracy"], fp32_val_accuracy=fp32_acc,
        sensitivity=sens, costs=costs, candidates=list(scored.values()), solver=config.solver,
        note=note)


def _optuna(config: MixedConfig, names: list[str], bits: list[int],
            cost_of: Callable, score: Callable, start: list[int], *,
            max_cost: float | None = None, min_score: float | None = None) -> list[int] | None:
    """Optuna's best feasible choices (starting from `start`), or None with `solver: dp`."""
    if config.solver != "optuna":
        return None
    best, _ = optuna_search(
        [bits] * len(names), cost_of, lambda c: score(c, "optuna"), trials=config.trials,
        max_cost=max_cost, min_score=min_score, start=[start], seed=config.seed)
    return list(best.choices) if best is not None else None


def front_of(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates on the (fewer bytes, higher validation accuracy) Pareto front."""
    idx = pareto_points([(c["weight_bytes"], c["val_accuracy"]) for c in candidates])
    return [candidates[i] for i in idx]
