"""Custom models for the command-line tests, imported by name (``byom_models:tiny_cnn``) as a user's
own ``package.module:factory`` would be. Not a test module."""

from __future__ import annotations

from torch import nn


def tiny_cnn(width: int = 8, num_classes: int = 4) -> nn.Module:
    """conv-BN-ReLU-MaxPool twice and a classifier: what PTQ folds and export must get right."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, stride=4, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


def wider_cnn() -> nn.Module:
    """Not the architecture a ``tiny_cnn`` checkpoint holds."""
    return tiny_cnn(width=12)


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.mean() > 0:  # data-dependent control flow: torch.export cannot capture it
            x = -x
        return self.conv(x).mean((2, 3))


def branchy() -> nn.Module:
    return _Branchy()
