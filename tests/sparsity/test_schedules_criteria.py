import pytest
import torch
from torch import nn

from sparseforge.sparsity import CRITERIA, Constant, Cubic, TaylorAccumulator, prune
from sparseforge.sparsity.compact import from_compact, to_compact


def test_cubic_follows_zhu_gupta():
    s = Cubic(initial=0.0, final=0.9, start=100, end=200)
    assert s(0) == 0.0 and s(100) == 0.0
    assert s(200) == 0.9 and s(10_000) == 0.9
    assert s(150) == pytest.approx(0.9 + (0.0 - 0.9) * (1 - 0.5) ** 3)
    values = [s(t) for t in range(100, 201)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    increments = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert increments[0] > increments[-1]  # prunes fast early, slowly late


def test_constant_and_bad_cubic():
    assert Constant(0.3)(12345) == 0.3
    with pytest.raises(ValueError, match="before it starts"):
        Cubic(0.0, 0.5, start=10, end=5)


def test_criteria_are_nonnegative_and_shaped_like_the_weight():
    w = torch.randn(6, 5)
    for name in CRITERIA.names():
        crit = CRITERIA.get(name)
        stat = w.abs() if crit.needs_grad else None
        out = crit.score(w, stat, torch.Generator().manual_seed(0))
        assert out.shape == w.shape and torch.all(out >= 0), name


def test_taylor_accumulates_mean_abs_weight_times_grad():
    acc = TaylorAccumulator()
    w = torch.tensor([1.0, -2.0])
    acc.update(w, torch.tensor([3.0, 1.0]))
    acc.update(w, torch.tensor([-1.0, 1.0]))
    assert torch.allclose(acc.value(), torch.tensor([2.0, 2.0]))
    with pytest.raises(RuntimeError, match="needs gradients"):
        CRITERIA.get("taylor").score(w, None, None)


def test_random_criterion_differs_from_magnitude():
    torch.manual_seed(0)
    a, b = nn.Linear(64, 64), nn.Linear(64, 64)
    b.load_state_dict(a.state_dict())
    prune(a, "unstructured", 0.5, criterion="magnitude")
    prune(b, "unstructured", 0.5, criterion="random")
    assert not torch.equal(a.weight != 0, b.weight != 0)


def test_compact_format_is_lossless_and_smaller_when_sparse():
    torch.manual_seed(0)
    w = torch.randn(64, 64)
    w[torch.rand_like(w) < 0.9] = 0
    state = {"w": w, "b": torch.randn(64), "n": torch.tensor(3)}
    compact = to_compact(state)
    restored = from_compact(compact)
    assert set(restored) == set(state)
    for k in state:
        assert torch.equal(restored[k], state[k])
    size = sum(t.numel() * t.element_size() for t in compact.values())
    assert size < 0.2 * sum(t.numel() * t.element_size() for t in state.values())
    assert "b" in compact  # a dense tensor stays dense
