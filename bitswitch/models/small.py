"""Tiny models for fast CPU experiments (Fashion-MNIST, scikit-learn digits)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import register

__all__ = ["MLP", "DigitsCNN", "SmallCNN"]


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class _ConvNet(nn.Module):
    """Three conv-BN-ReLU stages, global average pool, linear head."""

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, int, int],
        strides: tuple[int, int, int],
        num_classes: int,
    ) -> None:
        super().__init__()
        c1, c2, c3 = widths
        s1, s2, s3 = strides
        self.conv1, self.bn1, self.relu1 = _conv_bn_relu(in_channels, c1, s1)
        self.conv2, self.bn2, self.relu2 = _conv_bn_relu(c1, c2, s2)
        self.conv3, self.bn3, self.relu3 = _conv_bn_relu(c2, c3, s3)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register("small_cnn")
class SmallCNN(_ConvNet):
    """CNN for 28x28 grey images: 32 -> 64 (s2) -> 128 (s2) channels, ~94K params."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__(in_channels, (32, 64, 128), (1, 2, 2), num_classes)


@register("digits_cnn")
class DigitsCNN(_ConvNet):
    """CNN for 1x8x8 scikit-learn digits: 16 -> 32 (s2) -> 64 channels, ~24K params."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__(in_channels, (16, 32, 64), (1, 2, 1), num_classes)


@register("mlp")
class MLP(nn.Module):
    """Two hidden Linear-BN-ReLU layers for flattened 8x8 digits."""

    def __init__(
        self, in_features: int = 64, hidden: int = 128, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, hidden)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.fc1(self.flatten(x))))
        x = self.relu2(self.bn2(self.fc2(x)))
        return self.fc3(x)
