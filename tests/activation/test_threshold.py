import pytest

from sparseforge.activation import FATReLU, search_threshold


def quality_of(acts):
    return lambda: acts[0].threshold ** 2  # the loss grows with θ


def test_bisection_finds_largest_threshold_within_tolerance():
    acts = [FATReLU(), FATReLU()]
    result = search_threshold(acts, quality_of(acts), tolerance=0.04, high=1.0, iterations=12)
    assert result.threshold == pytest.approx(0.2, abs=1e-3)
    assert result.threshold <= 0.2 and result.loss <= 0.04
    assert all(a.threshold == result.threshold for a in acts)


def test_grid_stops_at_first_failure():
    acts = [FATReLU()]
    calls = []

    def loss():
        calls.append(acts[0].threshold)
        return {0.0: 0.0, 0.1: 0.01, 0.2: 0.05, 0.3: 0.0}[acts[0].threshold]

    result = search_threshold(acts, loss, tolerance=0.02, grid=[0.3, 0.1, 0.2])
    assert result.threshold == 0.1  # 0.3 passes but lies beyond the failing 0.2
    assert calls == [0.0, 0.1, 0.2]
    assert acts[0].threshold == 0.1


def test_failing_at_zero_leaves_relu_and_nan_is_an_error():
    acts = [FATReLU(0.3)]
    result = search_threshold(acts, lambda: 1.0, tolerance=0.5, high=1.0)
    assert result.threshold == 0.0 and result.loss > 0.5 and acts[0].threshold == 0.0
    with pytest.raises(ValueError, match="NaN"):
        search_threshold(acts, lambda: float("nan"), tolerance=0.5, high=1.0)
    with pytest.raises(ValueError, match="grid="):
        search_threshold(acts, lambda: 0.0, tolerance=0.5)
