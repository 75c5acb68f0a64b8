import math

import pytest
import torch

from sparseforge.models import MODELS, ResNet, create_model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", [8, 20])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_shape(depth: int, shape: tuple[int, int, int]) -> None:
    model = create_model("resnet", num_classes=7, in_channels=shape[0], depth=depth)
    assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_resnet20_size_and_structure() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=3)
    assert 260_000 < n_params(model) < 280_000  # 0.27M, as in He et al. (2016)
    convs = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert len(convs) + 1 == 20  # 19 3x3 convs + fc
    names = dict(model.named_modules())
    assert {"conv1", "layer1.0.conv1", "layer2.0.shortcut", "layer3.2.conv2", "fc"} <= set(names)


@pytest.mark.parametrize(("name", "depth"), [("resnet20", 20), ("resnet32", 32), ("resnet56", 56)])
def test_convenience_names(name: str, depth: int) -> None:
    assert name in MODELS
    model = create_model(name, num_classes=10, in_channels=3)
    assert isinstance(model, ResNet) and model.depth == depth
    assert len(model.layer1) == (depth - 2) // 6


@pytest.mark.parametrize("depth", [7, 18, 21, 2])
def test_bad_depth_lists_valid_ones(depth: int) -> None:
    with pytest.raises(ValueError, match=r"6n\+2.*8, 14, 20"):
        create_model("resnet", num_classes=10, in_channels=3, depth=depth)


def test_kaiming_init() -> None:
    torch.manual_seed(0)
    model = create_model("resnet", num_classes=10, in_channels=3, depth=8)
    conv = model.layer3[0].conv2  # 64 -> 64, 3x3: fan_out = 576
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.1)
    assert torch.all(model.layer1[0].bn1.weight == 1)
