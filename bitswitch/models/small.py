"""Tiny models for fast CPU experiments (Fashion-MNIST, scikit-learn digits)."""

from __future__ import annotations

from collections.abc import Sequence

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
    """Conv-BN-ReLU stages (``conv1``/``bn1``/``relu1``, ``conv2``, ...), average pool to ``pool`` x ``pool``
    (1: global), linear head."""

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        pool: int = 1,
    ) -> None:
        super().__init__()
        if not widths or len(widths) != len(strides):
            raise ValueError(f"need one stride per width and at least one stage, got widths={list(widths)}, strides={list(strides)}")
        if pool < 1:
            raise ValueError(f"pool must be >= 1 (the pooled map is pool x pool), got {pool}")
        self.depth = len(widths)
        cin = in_channels
        for i, (cout, stride) in enumerate(zip(widths, strides), 1):
            for kind, module in zip(("conv", "bn", "relu"), _conv_bn_relu(cin, cout, stride)):
                self.add_module(f"{kind}{i}", module)
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        self.fc = nn.Linear(cin * pool * pool, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, self.depth + 1):
            x = getattr(self, f"relu{i}")(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register("small_cnn")
class SmallCNN(_ConvNet):
    """CNN for 28x28 grey images: 32 -> 64 (s2) -> 128 (s2) channels, ~94K params.

    ``pool=7`` keeps the whole 7x7 map for the head (a 6,272-input linear layer, ~156K params): where
    the item is in the image matters on Fashion-MNIST, and this head costs no extra convolution
    (the converged runs of docs/results.md compare both heads).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, pool: int = 1) -> None:
        super().__init__(in_channels, (32, 64, 128), (1, 2, 2), num_classes, pool)


@register("digits_cnn")
class DigitsCNN(_ConvNet):
    """CNN for 1x8x8 scikit-learn digits: 16 -> 32 (s2) -> 64 channels, ~24K params by default.

    ``widths``/``strides`` give other depths (the quickstart uses six convolutions, so that five
    quantized layers leave a per-layer bit-width search something to choose).
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64), strides: Sequence[int] = (1, 2, 1)
    ) -> None:
        super().__init__(in_channels, widths, strides, num_classes)


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
