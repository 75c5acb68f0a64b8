import pytest
import torch
from torch import nn

from sparseforge.quant import (
    QuantConfig,
    TensorQuant,
    activation_quantizers,
    ptq,
    qparams,
    quantize,
    remove_activation_fake_quant,
    weight_qparams,
)
from sparseforge.sparsity import apply_mask, get_mask


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
    ).eval()


def batches(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 1, 8, 8, generator=g) for _ in range(n)]


def on_grid(w: torch.Tensor, spec: TensorQuant) -> bool:
    """Every value of `w` is an integer multiple of its channel's step."""
    scale, zp = weight_qparams(w, spec)
    axis = 0 if spec.granularity == "per_channel" else None
    shape = (-1,) + (1,) * (w.dim() - 1) if axis == 0 else ()
    codes = w / scale.reshape(shape)
    return torch.allclose(codes, codes.round(), atol=1e-3)


def test_ptq_close_to_fp32_and_leaves_the_original_alone():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    xs = batches()
    quantized = ptq(model, xs, QuantConfig())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    x = batches(1, seed=7)[0]
    ref, out = model(x), quantized(x)
    assert not torch.equal(ref, out)  # it did quantize
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    assert len(list(activation_quantizers(quantized))) == 3
    for m in quantized.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            assert on_grid(m.weight, TensorQuant())


def test_activations_on_their_grid_after_calibration():
    model = tiny_model()
    quantized = ptq(model, batches(), QuantConfig(weights=TensorQuant(bits=8)))
    seen = {}
    quantized[2].register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))  # after ours
    quantized(batches(1, seed=3)[0])
    q = dict(activation_quantizers(quantized))["2"]
    scale, zp = q.observer.qparams()
    codes = seen["x"] / scale + zp
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.min() >= 0 and codes.max() <= 255
    remove_activation_fake_quant(quantized)
    assert not list(activation_quantizers(quantized))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_masked_zeros_stay_exactly_zero(bits, symmetric):
    model = tiny_model()
    conv = model[2]
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(conv.weight.shape, generator=g) > 0.9  # 90% sparse
    apply_mask(conv, mask)
    spec = TensorQuant(bits=bits, symmetric=symmetric)
    quantized = ptq(model, batches(), QuantConfig(weights=spec))
    w = quantized[2].weight
    assert torch.equal(get_mask(quantized[2]), mask)
    assert (w[~mask] == 0).all()
    assert torch.equal(quantized[2].parametrizations.weight.original[~mask],
                       torch.zeros(int((~mask).sum())))
    # the scale comes from the kept weights only
    masked = conv.weight.detach()
    expected, _ = weight_qparams(masked, spec)
    got, _ = weight_qparams(w.detach(), spec)
    assert torch.allclose(got, expected, rtol=1e-5)


def test_asymmetric_weights_keep_zero_with_nonzero_zero_point():
    w = torch.tensor([[0.0, 0.3, 0.9, 1.7], [-0.2, 0.0, 0.0, 2.0]])
    scale, zp = qparams(w.amin(1), w.amax(1), 8, False)
    assert (zp != 0).any()
    codes = quantize(w, scale, zp, 8, False, axis=0)
    assert torch.equal(codes[w == 0], zp[:, None].expand(2, 4)[w == 0])


def test_per_token_activations_need_no_calibration():
    model = tiny_model()
    cfg = QuantConfig(activations=TensorQuant(symmetric=False, granularity="per_token"))
    quantized = ptq(model, [], cfg)
    x = batches(1)[0]
    assert (quantized(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="per_token is for activations"):
        QuantConfig(weights=TensorQuant(granularity="per_token"))
    with pytest.raises(ValueError, match="extra"):
        QuantConfig(weight={})
    with pytest.raises(ValueError, match="no batches"):
        ptq(tiny_model(), [], QuantConfig())
