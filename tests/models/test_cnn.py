import pytest
import torch

from sparseforge.models import CompactCNN, create_model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_params(in_ch: int, classes: int, width: int, hidden: int, side: int) -> int:
    w2 = 2 * width
    convs = 9 * (in_ch * width + width * width + width * w2 + w2 * w2)
    bns = 2 * (2 * width + 2 * w2)
    flat = w2 * (side // 4) ** 2
    return convs + bns + flat * hidden + hidden + hidden * classes + classes


def test_forward_and_size_on_fashion_mnist_shape() -> None:
    model = create_model("cnn", num_classes=10, in_channels=1)
    assert isinstance(model, CompactCNN)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert n_params(model) == expected_params(1, 10, 32, 256, 28) == 870_826


def test_kwargs_shape_the_network() -> None:
    model = create_model(
        "cnn", num_classes=5, in_channels=3, width=8, hidden=16, dropout=0.0, input_size=32
    )
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert n_params(model) == expected_params(3, 5, 8, 16, 32)
    assert model.features.conv3.out_channels == 16
    assert model.classifier.dropout1.p == 0.0


def test_readable_module_names() -> None:
    names = {n for n, _ in create_model("cnn", num_classes=10, in_channels=1).named_modules()}
    expected = {f"features.conv{i}" for i in range(1, 5)} | {f"features.bn{i}" for i in range(1, 5)}
    assert expected | {"features.pool2", "classifier.fc1", "classifier.fc2"} <= names


def test_too_small_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="input_size"):
        create_model("cnn", num_classes=10, in_channels=1, input_size=3)
