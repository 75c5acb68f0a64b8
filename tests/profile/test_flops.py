import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from sparseforge.profile.flops import count_flops, count_parameters


class Mask(nn.Module):
    """Test-local masking parametrization: weight * mask, mask stored as a buffer."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def half_mask(shape: torch.Size) -> torch.Tensor:
    mask = torch.ones(shape).flatten()
    mask[: mask.numel() // 2] = 0
    return mask.reshape(shape)


def test_conv2d_padding_same():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    report = count_flops(conv, torch.randn(1, 3, 10, 10))
    assert report.dense_flops == 2 * 8 * 10 * 10 * 3 * 9
    (layer,) = report.layers
    assert layer.name == "" and layer.type == "Conv2d"
    assert layer.params == 8 * 3 * 9 + 8
    assert layer.effective_flops == layer.dense_flops


def test_grouped_strided_dilated_conv():
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, dilation=2, groups=2)
    x = torch.randn(2, 4, 11, 11)
    out_hw = (11 + 2 * 1 - 2 * (3 - 1) - 1) // 2 + 1
    report = count_flops(conv, x)
    assert report.dense_flops == 2 * 2 * 8 * out_hw * out_hw * (4 // 2) * 9


def test_depthwise_conv1d():
    conv = nn.Conv1d(6, 6, 5, groups=6)
    report = count_flops(conv, torch.randn(3, 6, 20))
    assert report.dense_flops == 2 * 3 * 6 * 16 * 1 * 5


def test_linear_and_qualified_names():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2))
    report = count_flops(model, torch.randn(4, 3, 4))
    assert [layer.name for layer in report.layers] == ["1", "3"]
    assert [layer.dense_flops for layer in report.layers] == [2 * 4 * 12 * 5, 2 * 4 * 5 * 2]
    assert report.to_dict()["dense_flops"] == report.dense_flops == 2 * 4 * (60 + 10)
    assert report.to_dict()["layers"][0]["name"] == "1"


def test_linear_on_sequence_input():
    report = count_flops(nn.Linear(8, 3), torch.randn(2, 5, 8))
    assert report.dense_flops == 2 * 2 * 5 * 8 * 3


def test_module_called_twice_counts_twice():
    lin = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(self.lin(x))

    assert count_flops(Twice(), torch.randn(1, 4)).dense_flops == 2 * 2 * 16


def test_effective_flops_halve_with_half_zero_weight():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(half_mask(conv.weight.shape))
    (layer,) = count_flops(conv, torch.randn(1, 3, 10, 10)).layers
    assert layer.effective_flops * 2 == layer.dense_flops
    assert layer.nonzeros == conv.weight.numel() // 2 + 8


def test_effective_flops_through_parametrization():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    parametrize.register_parametrization(model[0], "weight", Mask(half_mask(model[0].weight.shape)))
    hits = []
    model[0].register_forward_hook(lambda *a: hits.append(1))
    report = count_flops(model, torch.randn(1, 3, 10, 10))
    (layer,) = report.layers
    assert hits == [1]
    assert layer.name == "0" and layer.type == "Conv2d"
    assert layer.dense_flops == 2 * 8 * 10 * 10 * 3 * 9
    assert layer.effective_flops * 2 == layer.dense_flops
    assert report.effective_flops * 2 == report.dense_flops


def test_restores_training_flags_and_removes_hooks():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(), nn.Linear(3, 1))
    model.train()
    model[1].eval()
    seen_training = []
    model[0].register_forward_pre_hook(lambda m, i: seen_training.append(m.training))
    count_flops(model, torch.randn(2, 3))
    assert seen_training == [False]
    assert [m.training for m in model] == [True, False, True]
    assert model.training
    assert len(model[2]._forward_hooks) == 0


def test_count_parameters_plain_model():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[1].weight.zero_()
    total, nonzero = count_parameters(model)
    assert total == 4 * 3 + 3 + 3 * 2
    assert nonzero == int(torch.count_nonzero(model[0].weight)) + int(
        torch.count_nonzero(model[0].bias)
    )


def test_count_parameters_counts_masked_tensor_not_original_or_mask():
    lin = nn.Linear(10, 4)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(1.0)
    parametrize.register_parametrization(lin, "weight", Mask(half_mask(lin.weight.shape)))
    model = nn.Sequential(lin, nn.ReLU())
    total, nonzero = count_parameters(model)
    assert total == 40 + 4
    assert nonzero == 20 + 4
    assert int(torch.count_nonzero(lin.parametrizations.weight.original)) == 40


def test_count_parameters_dedups_shared_modules():
    lin = nn.Linear(2, 2)
    model = nn.ModuleList([lin, lin])
    assert count_parameters(model)[0] == 6


@pytest.mark.parametrize("bias", [True, False])
def test_layer_params_follow_bias(bias):
    (layer,) = count_flops(nn.Linear(3, 2, bias=bias), torch.randn(1, 3)).layers
    assert layer.params == 6 + (2 if bias else 0)


def test_multihead_attention_counts_projections_and_products_once():
    from sparseforge.graph import prune_channels

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(x + self.attn(x, x, x, need_weights=False)[0])

    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(2, 5, 16)
    tokens = 2 * 5
    macs = tokens * 16 * 48 + tokens * 16 * 16 + 2 * 2 * 5 * 5 * 16 + tokens * 16 * 10
    report = count_flops(model, x)
    assert report.dense_flops == 2 * macs
    assert [layer.name for layer in report.layers] == ["attn", "fc"]
    small, plan = prune_channels(model, x, ratio=0.5)  # 4 -> 2 heads: attention halves
    assert plan.flops == (2 * macs, 2 * (macs - (tokens * 16 * 48 + tokens * 16 * 16 + 2 * 2 * 5 * 5 * 16) // 2))
