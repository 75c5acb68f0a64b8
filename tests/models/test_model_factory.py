import sys
from pathlib import Path

import pytest
import torch

from sparseforge.models import MODELS, create_model

FACTORIES = """
import torch.nn as nn


def full(num_classes, in_channels, hidden=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 4, hidden), nn.Linear(hidden, num_classes))


def no_kwargs(hidden=3):
    return nn.Linear(hidden, 2)


def anything(**kwargs):
    return nn.Linear(kwargs["in_channels"], kwargs["num_classes"])


def not_a_module(num_classes):
    return "oops"


CONSTANT = 3
"""


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(FACTORIES)
    return path


def test_registered_models() -> None:
    assert {"resnet", "resnet20", "resnet32", "resnet56", "cnn"} <= set(MODELS.names())


def test_user_factory_gets_num_classes_and_kwargs(model_file: Path) -> None:
    model = create_model(f"{model_file}:full", num_classes=6, in_channels=2, hidden=9)
    assert model(torch.randn(5, 2, 2, 2)).shape == (5, 6)
    assert model[1].out_features == 9


def test_user_factory_without_num_classes(model_file: Path) -> None:
    model = create_model(f"{model_file}:no_kwargs", num_classes=6, in_channels=2, hidden=7)
    assert isinstance(model, torch.nn.Linear) and model.in_features == 7


def test_user_factory_with_var_kwargs(model_file: Path) -> None:
    model = create_model(f"{model_file}:anything", num_classes=4, in_channels=3)
    assert (model.in_features, model.out_features) == (3, 4)


def test_non_module_return_is_a_type_error(model_file: Path) -> None:
    with pytest.raises(TypeError, match=r"my_models.py:not_a_module returned str"):
        create_model(f"{model_file}:not_a_module", num_classes=2, in_channels=1)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.py"):
        create_model(f"{tmp_path}/absent.py:build", num_classes=2, in_channels=1)


def test_missing_attribute_lists_what_exists(model_file: Path) -> None:
    with pytest.raises(AttributeError, match=r"no 'build'.*full"):
        create_model(f"{model_file}:build", num_classes=2, in_channels=1)


def test_non_callable_attribute(model_file: Path) -> None:
    with pytest.raises(TypeError, match="CONSTANT"):
        create_model(f"{model_file}:CONSTANT", num_classes=2, in_channels=1)


def test_unknown_name_lists_all_forms() -> None:
    with pytest.raises(KeyError) as err:
        create_model("resnet1000", num_classes=10, in_channels=3)
    message = str(err.value)
    assert "resnet20" in message and "torchvision:NAME" in message and ".py:factory" in message


def test_torchvision_absent_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(ImportError, match=r"sparseforge\[vision\]"):
        create_model("torchvision:resnet18", num_classes=10, in_channels=3)


def test_torchvision_needs_three_channels() -> None:
    with pytest.raises(ValueError, match="data.channels: 3"):
        create_model("torchvision:resnet18", num_classes=10, in_channels=1)


def test_torchvision_refuses_pretrained_weights() -> None:
    with pytest.raises(ValueError, match="never downloads"):
        create_model("torchvision:resnet18", num_classes=10, in_channels=3, weights="DEFAULT")


def test_real_torchvision_model() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # absent, or built for another torch
        pytest.skip(f"torchvision not importable: {err}")
    model = create_model("torchvision:resnet18", num_classes=10, in_channels=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_input_size_reaches_builders_that_take_it() -> None:
    cnn = create_model("cnn", num_classes=10, in_channels=3, input_size=(32, 32))
    assert cnn(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    resnet = create_model("resnet", num_classes=10, in_channels=3, input_size=(32, 32))
    assert resnet(torch.zeros(1, 3, 32, 32)).shape == (1, 10)  # ignored where not accepted
