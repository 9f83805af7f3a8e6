"""Quantized layers, switchable BatchNorm, model conversion and precision switching."""

from .batchnorm import SwitchableBatchNorm
from .convert import QuantConfig, calibrate, get_precision, quantize, quantized_layers, set_precision
from .layers import QuantConv2d, QuantLayer, QuantLinear
from .recalibrate import recalibrate_bn
from .transitional_bn import TransitionalBatchNorm, to_transitional

__all__ = [
    "QuantConfig", "QuantConv2d", "QuantLayer", "QuantLinear", "SwitchableBatchNorm", "TransitionalBatchNorm",
    "calibrate", "get_precision", "quantize", "quantized_layers", "recalibrate_bn", "set_precision", "to_transitional",
]
