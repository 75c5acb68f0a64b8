import math

import pytest
import torch
from torch import nn

from sparseforge.activation import FATReLU, L1Collector, SineStages, sine_staged_lambda

STAGES = dict(lambdas=[0.1, 1.0, 10.0], starts=[0, 100, 200], warmups=[50, 50, 20])


def test_schedule_values_at_boundaries_and_holds():
    s = SineStages(**STAGES)
    assert s(0) == 0.0
    assert s(25) == pytest.approx(0.1 * math.sin(math.pi / 4))
    assert s(50) == pytest.approx(0.1)
    assert s(99) == pytest.approx(0.1)  # held after the warm-up
    assert s(100) == pytest.approx(0.1)  # stage 2 starts from λ_1
    assert s(125) == pytest.approx(0.1 + 0.9 * math.sin(math.pi / 4))
    assert s(150) == pytest.approx(1.0)
    assert s(220) == pytest.approx(10.0)
    assert s(10_000) == pytest.approx(10.0)


def test_schedule_is_monotone_and_zero_before_first_stage():
    values = [sine_staged_lambda(t, [0.5, 2.0], [10, 60], [30, 0]) for t in range(100)]
    assert values[:10] == [0.0] * 10
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[60] == 2.0  # zero warm-up jumps


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(lambdas=[1.0, 0.5], starts=[0, 10], warmups=[5, 5]), "increasing"),
        (dict(lambdas=[1.0, 2.0], starts=[0, 10], warmups=[20, 5]), "past the start of stage 2"),
        (dict(lambdas=[1.0, 2.0], starts=[0], warmups=[5, 5]), "one entry per stage"),
        (dict(lambdas=[1.0], starts=[0], warmups=[5], extra=1), "extra"),
    ],
)
def test_schedule_rejects_bad_stages(bad, match):
    with pytest.raises(ValueError, match=match):
        SineStages(**bad)


def test_l1_collector_mean_over_layers_and_masks_padding():
    acts = [FATReLU(), FATReLU()]
    x1 = torch.randn(2, 3, 4, requires_grad=True)
    x2 = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    with L1Collector(acts) as collector:
        collector.token_mask = mask
        a1, a2 = acts[0](x1), acts[1](x2)
        got = collector.pop()
        assert collector.pop() is None  # cleared
    keep = mask.unsqueeze(-1).float()
    manual = ((a1.abs() * keep).sum() / (3 * 4) + (a2.abs() * keep).sum() / (3 * 4)) / 2
    assert torch.allclose(got, manual)
    got.backward()
    assert x1.grad is not None and x1.grad.abs().sum() > 0


def test_l1_collector_ignores_no_grad_forwards_and_removes_hooks():
    act = nn.ReLU()
    collector = L1Collector([act])
    with torch.no_grad():
        act(torch.ones(3))
    assert collector.pop() is None
    collector.remove()
    act(torch.ones(3))
    assert collector.pop() is None
