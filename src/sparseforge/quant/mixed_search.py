"""Searching one option per layer (a bit width) under a budget. `knapsack`: the exact solver, a
multiple-choice knapsack by dynamic programming over a discretised cost, which assumes the
layers' sensitivities add up; `optuna_search`: TPE over the same choices scored by a real
evaluation (validation accuracy), for when additivity is not trusted. Pure functions of
costs, values and callables: no model in here."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KnapsackTable:
    """best[c]: least total value with discretised total cost exactly c (inf if unreachable);
    `picks[l, c]` the option layer l takes on that optimum; cost c means at most c x `unit`."""

    best: np.ndarray  # (C + 1,)
    picks: np.ndarray  # (layers, C + 1) int16, -1 unreachable
    steps: list[list[int]]  # discretised cost of every option

    unit: float

    def choices_at(self, c: int) -> list[int]:
        """The option index of every layer in the optimum of discretised cost exactly c."""
        if not math.isfinite(self.best[c]):
            raise ValueError(f"no assignment has discretised cost {c}")
        picks = []
        for layer in range(self.picks.shape[0] - 1, -1, -1):
            k = int(self.picks[layer, c])
            picks.append(k)
            c -= self.steps[layer][k]
        return picks[::-1]

    def min_value(self, budget: float) -> list[int] | None:
        """Options of least total value whose total cost is at most `budget` (ties: cheapest);
        None if even the cheapest assignment exceeds it."""
        limit = min(int(math.floor(budget / self.unit + 1e-9)), len(self.best) - 1)
        if limit < 0 or not np.isfinite(self.best[: limit + 1]).any():
            return None
        return self.choices_at(int(np.argmin(self.best[: limit + 1])))

    def min_cost(self, value_budget: float) -> list[int] | None:
        """Options of least total cost whose total value is at most `value_budget` (the dual)."""
        ok = np.flatnonzero(self.best <= value_budget)
        return self.choices_at(int(ok[0])) if len(ok) else None

    def pareto(self) -> list[int]:
        """Discretised costs on the front: each strictly lowers the best value reachable."""
        front, lowest = [], math.inf
        for c, v in enumerate(self.best):
            if v < lowest:
                front.append(c)
                lowest = v
        return front


def knapsack(costs: Sequence[Sequence[float]], values: Sequence[Sequence[float]],
             unit: float = 1.0) -> KnapsackTable:
    """Multiple-choice knapsack: one option per layer, option k of layer l costing
    `costs[l][k]` (rounded up to whole `unit`s, so a budget met in units is met in real cost)
    and adding `values[l][k]`. O(layers x options x total cost / unit)."""
    if len(costs) != len(values) or not costs:
        raise ValueError("costs and values need one non-empty list of options per layer")
    if unit <= 0:
        raise ValueError(f"unit must be positive, got {unit}")
    steps = [[max(0, math.ceil(c / unit - 1e-9)) for c in layer] for layer in costs]
    for layer, (s, v) in enumerate(zip(steps, values, strict=True)):
        if len(s) != len(v) or not s:
            raise ValueError(f"layer {layer}: {len(s)} costs for {len(v)} values")
    size = sum(max(s) for s in steps) + 1
    best = np.full(size, np.inf)
    best[0] = 0.0
    picks = np.full((len(steps), size), -1, dtype=np.int16)
    for layer, (s, v) in enumerate(zip(steps, values, strict=True)):
        new = np.full(size, np.inf)
        for k, (w, value) in enumerate(zip(s, v, strict=True)):
            shifted = np.full(size, np.inf)
            shifted[w:] = best[: size - w] + value
            better = shifted < new
            new[better] = shifted[better]
            picks[layer, better] = k
        best = new
    return KnapsackTable(best, picks, steps, unit)


@dataclass(frozen=True)
class Trial:
    """One evaluated assignment: option index per layer, its cost and its score."""

    choices: tuple[int, ...]
    cost: float
    score: float


def optuna_search(
    options: Sequence[Sequence[int]], cost_fn: Callable[[list[int]], float],
    score_fn: Callable[[list[int]], float], *, trials: int, max_cost: float | None = None,
    min_score: float | None = None, start: Sequence[Sequence[int]] = (), seed: int = 0,
) -> tuple[Trial | None, list[Trial]]:
    """TPE over one option per layer (`options[l]` the labels layer l may take; the functions
    get option indices). With `max_cost`: maximise score subject to cost <= max_cost; with
    `min_score`: minimise cost subject to score >= min_score. `start` assignments are tried
    first (e.g. the dp solution). Returns (best feasible trial or None, every trial)."""
    try:
        import optuna
    except ImportError as err:
        raise ImportError("the optuna solver needs optuna: pip install 'sparseforge[quant]' "
                          "or use solver: dp") from err
    if (max_cost is None) == (min_score is None):
        raise ValueError("give exactly one of max_cost, min_score")
    names = [f"l{i}" for i in range(len(options))]
    done: list[Trial] = []

    def objective(trial: optuna.Trial) -> float:
        choices = [trial.suggest_categorical(n, list(range(len(o))))
                   for n, o in zip(names, options, strict=True)]
        cost, score = cost_fn(choices), score_fn(choices)
        done.append(Trial(tuple(choices), cost, score))
        violation = cost - max_cost if max_cost is not None else min_score - score
        if hasattr(trial, "set_constraint"):  # optuna >= 5
            trial.set_constraint("budget", violation)
        else:
            trial.set_user_attr("constraint", [violation])
        return score if max_cost is not None else cost

    if hasattr(optuna.Trial, "set_constraint"):
        sampler = optuna.samplers.TPESampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=seed, constraints_func=lambda t: t.user_attrs["constraint"])
    direction = "maximize" if max_cost is not None else "minimize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=sampler)
    for choices in start:
        study.enqueue_trial(dict(zip(names, choices, strict=True)))
    study.optimize(objective, n_trials=trials)
    feasible = [t for t in done if (t.cost <= max_cost if max_cost is not None
                                    else t.score >= min_score)]
    if not feasible:
        return None, done
    if max_cost is not None:
        return max(feasible, key=lambda t: (t.score, -t.cost)), done
    return min(feasible, key=lambda t: (t.cost, -t.score)), done


def pareto_points(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, score) points no other point beats on both (lower cost, higher
    score), sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, top = [], -math.inf
    for i in order:
        if points[i][1] > top:
            front.append(i)
            top = points[i][1]
    return front
