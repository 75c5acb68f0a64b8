"""CIFAR-style ResNet (He et al. 2016, section 4.2): 6n+2 layers of basic blocks at widths
16/32/64, with 1x1-conv (option B) shortcuts where the shape changes."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from sparseforge.models.factory import MODELS


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with a residual connection (1x1 conv+BN when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """conv3x3(16) -> 3 stages of n blocks (16, 32, 64 channels; stride 1, 2, 2) -> GAP -> fc."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        n = blocks_per_stage(depth)
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = _stage(16, 16, n, stride=1)
        self.layer2 = _stage(16, 32, n, stride=2)
        self.layer3 = _stage(32, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def blocks_per_stage(depth: int) -> int:
    """n for a 6n+2-layer ResNet; a ValueError that lists valid depths otherwise."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"resnet depth must be 6n+2 with n >= 1 (8, 14, 20, 26, 32, 44, 56, 110, ...), got {depth}"
        )
    return (depth - 2) // 6


def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
    blocks = [BasicBlock(in_planes, planes, stride)]
    blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


@MODELS.register("resnet")
def resnet(*, num_classes: int, in_channels: int, depth: int = 20) -> ResNet:
    """A CIFAR ResNet of the given depth (6n+2; default 20)."""
    return ResNet(depth=depth, num_classes=num_classes, in_channels=in_channels)


@MODELS.register("resnet20")
def resnet20(*, num_classes: int, in_channels: int) -> ResNet:
    """ResNet-20 (0.27M parameters on CIFAR-10)."""
    return ResNet(depth=20, num_classes=num_classes, in_channels=in_channels)


@MODELS.register("resnet32")
def resnet32(*, num_classes: int, in_channels: int) -> ResNet:
    """ResNet-32 (0.46M parameters on CIFAR-10)."""
    return ResNet(depth=32, num_classes=num_classes, in_channels=in_channels)


@MODELS.register("resnet56")
def resnet56(*, num_classes: int, in_channels: int) -> ResNet:
    """ResNet-56 (0.85M parameters on CIFAR-10)."""
    return ResNet(depth=56, num_classes=num_classes, in_channels=in_channels)
