"""What the memory analysis concludes, on traces whose answer is known: the iteration period of
the demo model (from its step markers), a data-dependent branch (partly unstable, not a failure),
peak-vs-batch prediction against measured peaks, and the swap / recompute / early-free rules."""

import numpy as np
import pytest
import torch
from torch import nn

from sparseforge.profile.memory import (
    block_stats,
    detect_period,
    fit_peak,
    pattern_stability,
    peak,
    record_steps,
    record_training,
)
from sparseforge.profile.memory.decisions import (
    early_free_candidates,
    recompute_candidates,
    swap_candidates,
)


@pytest.fixture
def recipe(make_recipe, write_fmnist, tiny_fmnist):
    write_fmnist(tiny_fmnist, n_train=1000, n_test=20)  # enough batches of 64 for the prediction
    return make_recipe(train={"batch_size": 16})


def test_the_period_is_the_demo_models_training_step(recipe):
    tr = record_training(recipe, steps=3).trace
    true_length = tr.step_starts[1] - tr.step_starts[0]
    assert tr.step_starts[2] - tr.step_starts[1] == true_length
    period = detect_period(tr)
    assert period.length == true_length
    assert period.starts == tuple(tr.step_starts) and period.stable
    stability = pattern_stability(tr, period)
    assert stability.total > 0 and stability.share == 1.0  # the paper's finding, on our model


class Branchy(nn.Module):
    """An MLP that adds a layer for batches whose mean is positive: a data-dependent branch."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.extra = nn.Linear(16, 32), nn.Linear(32, 4), nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if x.mean() > 0:
            h = torch.relu(self.extra(h))
        return self.b(h)


def test_a_data_dependent_branch_is_reported_as_partly_unstable():
    torch.manual_seed(0)
    model = Branchy()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    signs = [1, 1, -1, 1, -1, -1, 1, 1]
    batches = [(s * (torch.rand(8, 16) + 0.1), torch.randint(0, 4, (8,))) for s in signs]
    trace = record_steps(model, opt, batches)
    period = detect_period(trace)
    assert period is not None and not period.stable
    # still split at the true steps (from ops alone, up to where in the cycle it starts)
    starts, true = np.asarray(period.starts), np.asarray(trace.step_starts)
    assert len(starts) == len(true) and (starts - true == starts[0] - true[0]).all()
    assert 0 < period.match < 1
    assert pattern_stability(trace, period).share < 1


def test_predicted_peak_at_4x_the_batch_is_within_5_percent(recipe):
    sizes = [8, 16]
    fit = fit_peak(sizes, [peak(record_training(recipe, steps=2, batch_size=b).trace).nbytes for b in sizes])
    measured = peak(record_training(recipe, steps=2, batch_size=64).trace).nbytes
    assert fit.predict(64) == pytest.approx(measured, rel=0.05)
    # the largest batch that fits a budget, within one step of the truth
    budget = 0.5 * (fit.predict(40) + fit.predict(41))
    guess = fit.largest_batch(budget)
    fits = {b: peak(record_training(recipe, steps=1, batch_size=b).trace).nbytes <= budget
            for b in (guess - 1, guess, guess + 1, guess + 2)}
    true_largest = max(b for b, ok in fits.items() if ok)
    assert abs(true_largest - guess) <= 1 and not fits[guess + 2]


def test_fit_needs_two_batch_sizes():
    with pytest.raises(ValueError, match="two or more distinct batch sizes"):
        fit_peak([8, 8], [1, 1])


def recorded_mlp_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return record_steps(model, opt, [(torch.randn(64, 64), torch.randint(0, 10, (64,))) for _ in range(2)])


def test_recompute_candidates_are_cheap_activations_kept_for_backward():
    tr = recorded_mlp_step()
    stats, at_peak = block_stats(tr), peak(tr)
    cands = recompute_candidates(tr, stats, at_peak)
    assert cands and {c.op for c in cands} <= {"relu.default"}
    assert all(c.category == "Activation" and c.live_at_peak for c in cands)


def test_swap_rule_follows_the_bandwidth():
    tr = recorded_mlp_step()
    stats, at_peak = block_stats(tr), peak(tr)
    fast = swap_candidates(tr, stats, at_peak, bandwidth_gbps=1e3)  # nearly every idle gap hides a copy
    slow = swap_candidates(tr, stats, at_peak, bandwidth_gbps=1e-3)
    assert len(fast) > len(slow)
    for c in fast:
        assert stats.max_ati_s[c.block] > 2 * c.nbytes / 1e12  # the rule itself
    assert {c.block for c in slow} <= {c.block for c in fast}


def test_early_frees_are_blocks_idle_at_the_peak():
    tr = recorded_mlp_step()
    stats, at_peak = block_stats(tr), peak(tr)
    for c in early_free_candidates(tr, stats, at_peak):
        assert stats.last_access[c.block] < at_peak.seq < stats.free_seq[c.block]
