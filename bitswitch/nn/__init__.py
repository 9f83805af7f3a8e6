"""Quantized layers, switchable BatchNorm, model conversion and precision switching."""

from .batchnorm import SwitchableBatchNorm
from .attention import QuantMultiheadAttention
from .convert import QuantConfig, add_bit_width, calibrate, conversion_report, get_precision, quantize, quantized_layers, set_precision, to_integer
from .layers import QuantConv1d, QuantConv2d, QuantEmbedding, QuantLayer, QuantLinear
from .recalibrate import recalibrate_bn
from .transitional_bn import TransitionalBatchNorm, to_transitional

__all__ = [
    "QuantConfig", "QuantConv1d", "QuantConv2d", "QuantEmbedding", "QuantLayer", "QuantLinear", "QuantMultiheadAttention",
    "SwitchableBatchNorm", "TransitionalBatchNorm", "add_bit_width", "calibrate", "conversion_report", "get_precision", "quantize",
    "quantized_layers", "recalibrate_bn", "set_precision", "to_integer", "to_transitional",
]
