"""Deploying activation-sparse models: each FFN family gets its zero-skipping module and the
model's outputs do not change."""

import pytest
import torch
from torch import nn

from sparseforge.activation.deploy import deploy_activation_sparse
from sparseforge.activation.relu import substitute_activations
from sparseforge.kernels import ReluGatedFFN, SparseInputLinear


def _check(model: nn.Module, x: torch.Tensor, **kwargs) -> None:
    model.eval()
    with torch.no_grad():
        expected = model(x, **kwargs)
        report = deploy_activation_sparse(model)
        got = model(x, **kwargs)
    assert report.replaced and not report.left
    if not isinstance(expected, torch.Tensor):
        expected, got = expected[0], got[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    return report


def test_bert_down_projections_skip_zero_activations(tiny_bert):
    model = tiny_bert()
    substitute_activations(model, threshold=0.05)
    report = _check(model, torch.randint(0, 40, (2, 7)))
    assert report.replaced == ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
    assert isinstance(model.encoder.layer[1].output.dense, SparseInputLinear)


def test_llama_mlps_become_relu_gated_ffns(tiny_llama):
    model = tiny_llama()
    substitute_activations(model)
    report = _check(model, torch.randint(0, 40, (1, 6)), use_cache=False)
    assert report.replaced == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert isinstance(model.model.layers[0].mlp, ReluGatedFFN)


def test_plain_sequential_ffn_and_what_stays_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), nn.Sequential(nn.GELU()))
    substitute_activations(model, patterns=["", "3"])
    report = deploy_activation_sparse(model)
    assert report.replaced == ["2"] and isinstance(model[2], SparseInputLinear)
    assert list(report.left) == ["3.0"]  # nothing after it to make sparse-input
    with pytest.raises(ValueError, match="has no FATReLU"):
        deploy_activation_sparse(nn.Linear(2, 2))
