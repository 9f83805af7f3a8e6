"""Pre-activation ResNet for CIFAR (He et al., 2016, "Identity Mappings").

This is the ResNet-20 family used by "Nearly Lossless Adaptive Bit Switching":
BN and ReLU come *before* each conv, so the stem conv has no BN of its own and a
final BN + ReLU follows the last stage. Global average pooling makes the network
work for any input size (32x32 CIFAR, 28x28 MNIST-like, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import register
from ._init import torchvision_init

__all__ = ["PreActBlock", "PreActResNet", "preact_resnet8", "preact_resnet20"]


class PreActBlock(nn.Module):
    """Basic pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(
            in_planes, planes, 3, stride=stride, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        # The projection shortcut sees the pre-activated input, as in the paper.
        identity = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + identity


class PreActResNet(nn.Module):
    """Pre-activation ResNet with ``depth = 6n + 2`` and stage widths w, 2w, 4w."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}"
            )
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_stage(width, width, n, stride=1)
        self.layer2 = self._make_stage(width, 2 * width, n, stride=2)
        self.layer3 = self._make_stage(2 * width, 4 * width, n, stride=2)
        self.bn = nn.BatchNorm2d(4 * width)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        torchvision_init(self, init_linear=False)

    @staticmethod
    def _make_stage(
        in_planes: int, planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        layers = [PreActBlock(in_planes, planes, stride)]
        layers += [PreActBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register("preact_resnet20")
def preact_resnet20(
    num_classes: int = 10, in_channels: int = 3, width: int = 16
) -> PreActResNet:
    """Pre-activation ResNet-20 (0.27M parameters at width 16, 10 classes)."""
    return PreActResNet(
        20, num_classes=num_classes, in_channels=in_channels, width=width
    )


@register("preact_resnet8")
def preact_resnet8(
    num_classes: int = 10, in_channels: int = 3, width: int = 16
) -> PreActResNet:
    """Pre-activation ResNet-8: same design, one block per stage, for fast tests."""
    return PreActResNet(
        8, num_classes=num_classes, in_channels=in_channels, width=width
    )
