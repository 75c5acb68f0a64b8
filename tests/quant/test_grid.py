import pytest
import torch

from sparseforge.quant import (
    dequantize,
    fake_quantize,
    fake_quantize_per_token,
    qparams,
    qrange,
    quantize,
)


def test_ranges():
    assert qrange(8, True) == (-127, 127)
    assert qrange(8, False) == (0, 255)
    assert qrange(4, True) == (-7, 7)
    assert qrange(4, False) == (0, 15)


def test_symmetric_qparams_exact():
    scale, zp = qparams(torch.tensor(-2.54), torch.tensor(1.0), 8, True)
    assert scale.item() == pytest.approx(2.54 / 127, rel=1e-7)
    assert zp.item() == 0


def test_asymmetric_qparams_exact_and_zero_representable():
    scale, zp = qparams(torch.tensor(-1.0), torch.tensor(3.0), 8, False)
    assert scale.item() == pytest.approx(4.0 / 255, rel=1e-7)
    assert zp.item() == round(1.0 / (4.0 / 255))  # 64
    # a range not containing 0 is widened to include it
    scale, zp = qparams(torch.tensor(2.0), torch.tensor(5.1), 8, False)
    assert zp.item() == 0 and scale.item() == pytest.approx(5.1 / 255, rel=1e-7)
    x = torch.tensor([0.0])
    assert fake_quantize(x, scale, zp, 8, False).item() == 0.0


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_within_half_a_step(bits, symmetric):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    scale, zp = qparams(x.min(), x.max(), bits, symmetric)
    q = quantize(x, scale, zp, bits, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    assert q.min() >= qmin and q.max() <= qmax
    back = dequantize(q, scale, zp)
    assert (back - x).abs().max() <= scale / 2 + 1e-6
    # the fake-quant op (torch's) is the integer reference's twin, exactly
    assert torch.equal(fake_quantize(x, scale, zp, bits, symmetric), back)


def test_int4_has_fifteen_levels():
    x = torch.linspace(-1, 1, 1001)
    scale, zp = qparams(x.min(), x.max(), 4, True)
    levels = fake_quantize(x, scale, zp, 4, True).unique()
    assert len(levels) == 15
    assert levels.max().item() == pytest.approx(1.0)


def test_per_channel_beats_per_tensor_on_uneven_channels():
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    w = w * torch.tensor([[0.01], [0.1], [1.0], [10.0]])
    lo_c, hi_c = w.amin(1), w.amax(1)
    s_c, z_c = qparams(lo_c, hi_c, 8, True)
    s_t, z_t = qparams(w.min(), w.max(), 8, True)
    err_c = (fake_quantize(w, s_c, z_c, 8, True, axis=0) - w).abs()
    err_t = (fake_quantize(w, s_t, z_t, 8, True) - w).abs()
    assert (err_c.amax(1) <= s_c / 2 + 1e-7).all()
    # the small channels lose everything under one scale and little under their own
    assert err_c[0].max() < err_t[0].max() / 100


def test_straight_through_gradient_is_clipped():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.7, 3.0], requires_grad=True)
    scale, zp = qparams(torch.tensor(-1.0), torch.tensor(1.0), 8, True)
    fake_quantize(x, scale, zp, 8, True).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_per_token_scales_each_row():
    x = torch.stack([torch.linspace(-1, 1, 16), torch.linspace(-100, 100, 16)])  # (2, 16)
    y = fake_quantize_per_token(x, 8, True, channel_dim=-1)
    assert (y[0] - x[0]).abs().max() <= 1 / 127 / 2 + 1e-7
    assert (y[1] - x[1]).abs().max() <= 100 / 127 / 2 + 1e-5
    conv_input = torch.randn(2, 3, 4, 4)
    y = fake_quantize_per_token(conv_input, 8, False, channel_dim=1)
    assert y.shape == conv_input.shape
    step = (conv_input.amax(1).clamp(min=0) - conv_input.amin(1).clamp(max=0)) / 255
    assert ((y - conv_input).abs() <= step.unsqueeze(1) / 2 + 1e-6).all()
