"""Quantizer maths: integer grids, Double Rounding, LSQ activations, range setting."""

from .activation import ActivationQuantizer
from .grid import ROUNDING_MODES, int_range, requantize, requantize_int
from .weight import DoubleRoundingWeight, UnsharedWeight

__all__ = ["ActivationQuantizer", "DoubleRoundingWeight", "UnsharedWeight", "ROUNDING_MODES", "int_range", "requantize", "requantize_int"]
