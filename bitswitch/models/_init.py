"""torchvision's weight initialisation, shared by the model definitions."""

from __future__ import annotations

from torch import nn


def torchvision_init(model: nn.Module, *, init_linear: bool) -> None:
    """Kaiming-normal (fan-out) convs, unit/zero BatchNorm, and N(0, 0.01) linears if ``init_linear``.

    Same draws in the same order as torchvision, so a seeded model matches its torchvision twin;
    ResNets keep PyTorch's default ``nn.Linear`` initialisation (``init_linear=False``).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif init_linear and isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
