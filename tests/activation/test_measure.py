import torch
from torch import nn

from sparseforge.activation import (
    FATReLU,
    ZeroCounter,
    measure_activation_sparsity,
    plot_activation_sparsity,
)


def test_measurement_equals_manual_count(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 10), FATReLU(0.1), nn.Linear(10, 8), FATReLU(), nn.Linear(8, 2)
    )
    batches = [torch.randn(5, 6) for _ in range(3)]
    result = measure_activation_sparsity({"a": model[1], "b": model[3]}, batches, model)
    h1 = [model[1](model[0](x)) for x in batches]
    h2 = [model[3](model[2](h)) for h in h1]
    zeros1 = sum(int((h == 0).sum()) for h in h1)
    zeros2 = sum(int((h == 0).sum()) for h in h2)
    assert [la.name for la in result.layers] == ["a", "b"]
    assert result.layers[0].sparsity == zeros1 / (15 * 10)
    assert result.layers[1].sparsity == zeros2 / (15 * 8)
    assert result.overall == (zeros1 + zeros2) / (15 * 18)
    assert 0 < result.overall < 1
    assert plot_activation_sparsity({"run": result}, tmp_path / "p.png").stat().st_size > 1000


def test_token_mask_and_nonpositive_count():
    act = nn.GELU()
    x = torch.tensor([[[-1.0, 2.0], [3.0, -4.0]], [[0.5, 0.5], [-9.0, -9.0]]])  # (B=2, T=2, I=2)
    mask = torch.tensor([[True, True], [True, False]])
    with ZeroCounter({"g": act}, count="nonpositive") as counter:
        counter.token_mask = mask
        act(x)
    layer = counter.result.layers[0]
    assert (layer.zeros, layer.total) == (2, 6)  # the padded token's two negatives are not counted
    counter.reset()
    assert layer.total == 0
