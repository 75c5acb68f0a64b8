import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from sparseforge.quant.config import MixedBudget, MixedConfig, QuantSpec
from sparseforge.quant.mixed import accuracy, apply_bits, front_of, mixed_precision
from sparseforge.quant.mixed_sensitivity import round_weight
from sparseforge.sparsity.masks import apply_mask


def trained_mlp(seed: int = 0):
    """A small MLP fitted for a few steps on a linearly separable toy task, and its data."""
    torch.manual_seed(seed)
    x = torch.randn(600, 12)
    y = (x[:, :4].argmax(1))
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 4))
    for _ in range(40):  # plain gradient descent: cheap, and enough to separate the classes
        model.zero_grad()
        nn.functional.cross_entropy(model(x[:400]), y[:400]).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    calib = [(x[:200], y[:200]), (x[200:400], y[200:400])]
    return model.eval(), calib, TensorDataset(x[400:], y[400:])


def test_dp_choice_meets_the_byte_budget_and_is_scored_on_validation():
    model, calib, val = trained_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = mixed_precision(model, calib, val, QuantSpec(),
                             MixedConfig(budget=MixedBudget(weight_bytes=0.6), candidates=4))
    assert result.weight_bytes <= 0.6 * result.int8_bytes
    assert set(result.assignment) == {"0", "2", "4"} and set(result.assignment.values()) <= {4, 8, 16, 32}
    assert 4 in result.assignment.values()  # 0.6 x int8 is only reachable with int4 layers
    again = accuracy(apply_bits(model, result.assignment, QuantSpec().weights), val)
    assert result.val_accuracy == pytest.approx(again)
    assert result.fp32_val_accuracy == pytest.approx(accuracy(model, val))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {c["source"] for c in result.candidates} >= {"dp", "dp-front"}
    front = front_of(result.candidates)
    assert all(a["weight_bytes"] < b["weight_bytes"] and a["val_accuracy"] < b["val_accuracy"]
               for a, b in zip(front, front[1:], strict=False))
    with pytest.raises(ValueError, match="raise mixed.budget.weight_bytes"):
        mixed_precision(model, calib, val, QuantSpec(),
                        MixedConfig(bits=[8, 16], budget=MixedBudget(weight_bytes=0.5)))


def test_accuracy_budget_picks_the_smallest_candidate_within_the_drop():
    model, calib, val = trained_mlp()
    result = mixed_precision(model, calib, val, QuantSpec(),
                             MixedConfig(budget=MixedBudget(accuracy_drop=1.0), candidates=6))
    assert result.val_accuracy >= result.fp32_val_accuracy - 1.0
    within = [c for c in result.candidates if c["val_accuracy"] >= result.fp32_val_accuracy - 1.0]
    assert result.weight_bytes == min(c["weight_bytes"] for c in within)


def test_apply_bits_keeps_pruned_zeros_and_leaves_unnamed_layers():
    model, _, _ = trained_mlp()
    apply_mask(model[0], (torch.rand_like(model[0].weight) > 0.5).float())
    out = apply_bits(model, {"0": 4, "2": 16}, QuantSpec().weights)
    assert (out[0].weight[model[0].weight == 0] == 0).all()
    assert torch.equal(out[0].weight, round_weight(model[0].weight.detach(), 4, QuantSpec().weights))
    assert torch.equal(out[4].weight, model[4].weight)


def test_optuna_solver_runs_a_few_trials_within_budget():
    pytest.importorskip("optuna")
    model, calib, val = trained_mlp()
    config = MixedConfig(solver="optuna", trials=3, candidates=2,
                         budget=MixedBudget(weight_bytes=0.8))
    result = mixed_precision(model, calib, val, QuantSpec(), config)
    assert result.solver == "optuna" and result.weight_bytes <= 0.8 * result.int8_bytes
    optuna_scored = [c for c in result.candidates if c["source"] == "optuna"]
    dp = next(c for c in result.candidates if c["source"] == "dp")
    assert result.val_accuracy >= dp["val_accuracy"]  # the dp pick is its first trial
    assert len(optuna_scored) <= 3
