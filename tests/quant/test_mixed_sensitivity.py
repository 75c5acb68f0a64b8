import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.quant.config import TensorQuant
from sparseforge.quant.mixed_sensitivity import (
    hessian_sensitivity,
    hutchinson_trace,
    loss_sensitivity,
    mean_loss,
    round_weight,
    weight_bytes,
)

SPEC = TensorQuant()


def tiny_model_and_batches(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).eval()
    batches = [(torch.randn(16, 1, 5, 5), torch.randint(0, 3, (16,))) for _ in range(2)]
    return model, {"0": model[0], "3": model[3]}, batches


def test_round_weight_per_width():
    w = torch.randn(6, 5)
    w[0, :2] = 0.0
    assert round_weight(w, 32, SPEC) is w
    assert torch.equal(round_weight(w, 16, SPEC), w.bfloat16().float())
    for bits in (4, 8):
        q = round_weight(w, bits, SPEC)
        assert (q[0, :2] == 0).all()
        levels = (q / (w.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1))).round()
        assert levels.unique().numel() <= 2 ** bits - 1  # on the narrow symmetric grid
    err = [(round_weight(w, b, SPEC) - w).norm() for b in (4, 8, 16)]
    assert err[0] > err[1] > err[2] > 0
    with pytest.raises(ValueError, match="choose from 4, 8, 16, 32"):
        round_weight(w, 2, SPEC)


def test_weight_bytes_counts_values_and_scales():
    w = torch.zeros(10, 3, 3, 3)
    assert weight_bytes(w, 32, SPEC) == 270 * 4
    assert weight_bytes(w, 16, SPEC) == 270 * 2
    assert weight_bytes(w, 8, SPEC) == 270 + 10 * 4
    assert weight_bytes(w, 4, SPEC) == 135 + 10 * 4
    assert weight_bytes(w, 8, TensorQuant(granularity="per_tensor", symmetric=False)) == 270 + 8


def test_loss_sensitivity_is_zero_at_32_bits_and_restores_weights():
    model, layers, batches = tiny_model_and_batches()
    before = {n: m.weight.detach().clone() for n, m in layers.items()}
    sens = loss_sensitivity(model, layers, batches, (4, 8, 16, 32), SPEC)
    for name in layers:
        assert sens[name][32] == 0.0
        assert sens[name][4] != 0.0
        assert torch.equal(layers[name].weight, before[name])
    # Each entry is that layer alone rounded: recompute one by hand.
    with torch.no_grad():
        base = mean_loss(model, batches)
        layers["3"].weight.copy_(round_weight(before["3"], 4, SPEC))
        assert sens["3"][4] == pytest.approx(mean_loss(model, batches) - base, abs=1e-6)


def test_hutchinson_is_exact_for_a_diagonal_hessian_and_close_for_a_full_one():
    gen = torch.Generator().manual_seed(0)
    d = torch.rand(50) + 0.5
    x = torch.randn(50, requires_grad=True)
    y = torch.randn(7, 3, requires_grad=True)
    a = torch.randn(21, 21)
    h = a @ a.T + 21 * torch.eye(21)  # symmetric, diagonally heavy

    def loss():  # 0.5 x^T diag(d) x + 0.5 vec(y)^T H vec(y): Hessians diag(d) and H
        yy = y.reshape(-1)
        return 0.5 * (d * x * x).sum() + 0.5 * yy @ h @ yy

    tx, ty = hutchinson_trace(loss, [x, y], samples=400, generator=gen)
    assert tx == pytest.approx(d.sum().item(), rel=1e-5)  # v_i^2 = 1: no variance
    assert ty == pytest.approx(torch.trace(h).item(), rel=0.05)


def test_hessian_sensitivity_is_trace_per_param_times_perturbation():
    model, layers, batches = tiny_model_and_batches()
    sens = hessian_sensitivity(model, {"3": layers["3"]}, batches, (4, 8, 32), SPEC, samples=64)
    assert sens["3"][32] == 0.0
    w = layers["3"].weight.detach()
    ratio = sens["3"][4] / (round_weight(w, 4, SPEC) - w).pow(2).sum().item()
    # The linear head under cross-entropy has a PSD Hessian: positive trace; check it against
    # the exact trace from the full Hessian of this small layer on batch 0 and 1.
    exact = 0.0
    for x, y in batches:
        feats = model[:3](x)

        def head_loss(wt, feats=feats, y=y):
            return F.cross_entropy(F.linear(feats, wt, layers["3"].bias), y)

        exact += torch.autograd.functional.hessian(head_loss, w, vectorize=True).reshape(w.numel(), -1).trace()
    exact = exact.item() / len(batches)
    assert ratio == pytest.approx(exact / w.numel(), rel=0.15)
    assert sens["3"][4] > sens["3"][8] > 0
    assert not any(p.grad is not None for p in model.parameters())
