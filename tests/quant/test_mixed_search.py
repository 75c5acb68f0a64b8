import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.quant.mixed_search import knapsack, optuna_search, pareto_points

# Small instances: 1-4 layers with 1-4 options, integer costs 0-6, values -3..10.
option = st.tuples(st.integers(0, 6), st.floats(-3, 10, allow_nan=False, width=32))
instance = st.lists(st.lists(option, min_size=1, max_size=4), min_size=1, max_size=4)


def brute(layers):
    """(cost, value, choices) of every assignment."""
    for choices in itertools.product(*[range(len(layer)) for layer in layers]):
        yield (sum(layers[i][k][0] for i, k in enumerate(choices)),
               sum(layers[i][k][1] for i, k in enumerate(choices)), choices)


def split(layers):
    return [[c for c, _ in layer] for layer in layers], [[v for _, v in layer] for layer in layers]


def totals(layers, choices):
    return (sum(layers[i][k][0] for i, k in enumerate(choices)),
            sum(layers[i][k][1] for i, k in enumerate(choices)))


@settings(max_examples=150, deadline=None)
@given(instance, st.integers(0, 25))
def test_dp_min_value_equals_brute_force_and_keeps_the_budget(layers, budget):
    table = knapsack(*split(layers))
    picked = table.min_value(budget)
    feasible = [(c, v) for c, v, _ in brute(layers) if c <= budget]
    if not feasible:
        assert picked is None
        return
    cost, value = totals(layers, picked)
    assert cost <= budget
    assert value == pytest.approx(min(v for _, v in feasible), abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(instance, st.floats(-5, 30, allow_nan=False))
def test_dp_dual_min_cost_equals_brute_force(layers, value_budget):
    picked = knapsack(*split(layers)).min_cost(value_budget)
    feasible = [c for c, v, _ in brute(layers) if v <= value_budget]  # same summation order
    if not feasible:
        assert picked is None
        return
    cost, value = totals(layers, picked)
    assert value <= value_budget
    assert cost == min(feasible)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0.1, 50), min_size=2, max_size=3), min_size=1, max_size=4),
       st.floats(0.5, 5.0), st.floats(1.0, 120.0))
def test_real_costs_rounded_up_never_exceed_the_budget(costs, unit, budget):
    values = [[-c for c in layer] for layer in costs]  # bigger is better: fill the budget
    picked = knapsack(costs, values, unit=unit).min_value(budget)
    if picked is not None:
        assert sum(costs[i][k] for i, k in enumerate(picked)) <= budget + 1e-9


def test_pareto_front_lowers_value_with_every_step():
    table = knapsack([[1, 2, 4], [1, 3]], [[5.0, 2.0, 0.0], [3.0, 0.0]])
    front = table.pareto()
    values = [table.best[c] for c in front]
    assert front[0] == 2 and values[0] == 8.0 and values[-1] == 0.0
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert pareto_points([(1, 50.0), (2, 40.0), (3, 60.0), (3, 55.0)]) == [0, 2]


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="one non-empty list"):
        knapsack([], [])
    with pytest.raises(ValueError, match="2 costs for 1 values"):
        knapsack([[1, 2]], [[0.0]])


def test_optuna_search_respects_the_cost_limit_and_starts_from_the_given_assignment():
    pytest.importorskip("optuna")
    options = [[4, 8, 16]] * 3
    cost = lambda c: sum(options[0][k] for k in c)  # noqa: E731
    score = lambda c: -sum((2 - k) ** 2 for k in c)  # noqa: E731  best: widest everywhere
    best, trials = optuna_search(options, cost, score, trials=6, max_cost=28, start=[[0, 0, 0]])
    assert trials[0].choices == (0, 0, 0)  # the enqueued start is tried first
    assert best is not None and best.cost <= 28
    assert best.score == max(t.score for t in trials if t.cost <= 28)
    dual, _ = optuna_search(options, cost, score, trials=4, min_score=-12, start=[[1, 1, 1]])
    assert dual is not None and dual.score >= -12 and math.isfinite(dual.cost)
