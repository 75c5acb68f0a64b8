"""A compact VGG-style CNN for 28x28-ish images: two conv-conv-pool stages and a two-layer
classifier; trains to >91% on Fashion-MNIST in a few CPU epochs."""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

from sparseforge.models.factory import MODELS


def _conv_bn_relu(index: int, in_ch: int, out_ch: int) -> list[tuple[str, nn.Module]]:
    return [
        (f"conv{index}", nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)),
        (f"bn{index}", nn.BatchNorm2d(out_ch)),
        (f"relu{index}", nn.ReLU()),
    ]


class CompactCNN(nn.Sequential):
    """`features` (conv1..conv4 with BN/ReLU, pool1, pool2) then `classifier` (fc1, fc2)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 32,
        hidden: int = 256,
        dropout: float = 0.25,
        input_size: int | tuple[int, int] = 28,
    ) -> None:
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        if h < 4 or w < 4:
            raise ValueError(f"cnn needs input_size >= 4 (two 2x2 poolings), got {input_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"cnn dropout must be in [0, 1), got {dropout}")
        wide = 2 * width
        features = nn.Sequential(
            OrderedDict(
                _conv_bn_relu(1, in_channels, width)
                + _conv_bn_relu(2, width, width)
                + [("pool1", nn.MaxPool2d(2))]
                + _conv_bn_relu(3, width, wide)
                + _conv_bn_relu(4, wide, wide)
                + [("pool2", nn.MaxPool2d(2))]
            )
        )
        classifier = nn.Sequential(
            OrderedDict(
                [
                    ("flatten", nn.Flatten()),
                    ("dropout1", nn.Dropout(dropout)),
                    ("fc1", nn.Linear(wide * (h // 4) * (w // 4), hidden)),
                    ("relu", nn.ReLU()),
                    ("dropout2", nn.Dropout(dropout)),
                    ("fc2", nn.Linear(hidden, num_classes)),
                ]
            )
        )
        super().__init__(OrderedDict([("features", features), ("classifier", classifier)]))


@MODELS.register("cnn")
def cnn(
    *,
    num_classes: int,
    in_channels: int,
    width: int = 32,
    hidden: int = 256,
    dropout: float = 0.25,
    input_size: int | tuple[int, int] = 28,
) -> CompactCNN:
    """The compact CNN; set `input_size` to the image side when it is not 28."""
    return CompactCNN(num_classes, in_channels, width, hidden, dropout, input_size)
