"""Quantized layers, switchable BatchNorm, model conversion and precision switching."""

from .batchnorm import SwitchableBatchNorm
from .convert import QuantConfig, calibrate, get_precision, quantize, quantized_layers, set_precision
from .layers import QuantConv2d, QuantLayer, QuantLinear

__all__ = [
    "QuantConfig", "QuantConv2d", "QuantLayer", "QuantLinear", "SwitchableBatchNorm",
    "calibrate", "get_precision", "quantize", "quantized_layers", "set_precision",
]
