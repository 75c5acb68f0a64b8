import pytest
import torch

from sparseforge.quant import OBSERVERS, TensorQuant, fake_quantize, make_observer, weight_qparams


def spec(observer, **kw):
    return TensorQuant(observer=observer, **kw)


def test_minmax_per_tensor_and_per_channel_exact():
    obs = make_observer(spec("minmax", symmetric=False), axis=None)
    obs.observe(torch.tensor([[-1.0, 2.0], [0.5, 0.0]]))
    obs.observe(torch.tensor([[3.0, -0.5]]))
    lo, hi = obs.range()
    assert (lo.item(), hi.item()) == (-1.0, 3.0)
    scale, zp = obs.qparams()
    assert scale.item() == pytest.approx(4.0 / 255) and zp.item() == 64

    w = torch.tensor([[1.0, -2.0], [0.25, 0.5]])
    scale, zp = weight_qparams(w, spec("minmax"))
    assert torch.allclose(scale, torch.tensor([2.0 / 127, 0.5 / 127]))
    assert zp.tolist() == [0, 0]


def test_moving_average_exact():
    obs = make_observer(spec("moving_average", averaging_constant=0.5), axis=None)
    obs.observe(torch.tensor([-1.0, 1.0]))
    obs.observe(torch.tensor([-3.0, 5.0]))
    lo, hi = obs.range()
    assert (lo.item(), hi.item()) == (-2.0, 3.0)


def test_percentile_clips_an_outlier():
    x = torch.cat([torch.linspace(-1, 1, 10_000), torch.tensor([1000.0])])
    obs = make_observer(spec("percentile", percentile=99.0), axis=None)
    obs.observe(x)
    lo, hi = obs.range()
    assert hi.item() < 1.0 and lo.item() > -1.0 and hi.item() > 0.9


def test_mse_clips_heavy_tails_and_lowers_error():
    u = torch.rand(20_000, generator=torch.Generator().manual_seed(0)) - 0.5
    x = -u.sign() * torch.log1p(-2 * u.abs())  # Laplace(0, 1)
    x[0] = 40.0
    s4 = spec("mse", bits=4)
    mse = make_observer(s4, axis=None)
    mm = make_observer(spec("minmax", bits=4), axis=None)
    mse.observe(x)
    mm.observe(x)
    assert mse.range()[1] < mm.range()[1]
    def err(obs):
        s, z = obs.qparams()
        return (fake_quantize(x, s, z, 4, True) - x).pow(2).mean()

    assert err(mse) < err(mm)


@pytest.mark.parametrize("name", OBSERVERS.names())
def test_every_observer_per_channel_shapes_and_state(name):
    x = torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    obs = make_observer(spec(name, symmetric=False), axis=1)
    obs.observe(x)
    obs.observe(x * 2)
    scale, zp = obs.qparams()
    assert scale.shape == (3,) and zp.shape == (3,) and (scale > 0).all()
    again = make_observer(spec(name, symmetric=False), axis=1)
    again.load_state_dict(obs.state_dict())
    assert torch.equal(again.qparams()[0], scale)


def test_empty_observer_says_what_to_do():
    with pytest.raises(RuntimeError, match="calibrate"):
        make_observer(spec("minmax"), axis=None).qparams()
