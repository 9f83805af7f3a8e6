"""bitswitch: bit-switchable and mixed-precision neural networks.

Typical use::

    import bitswitch
    qmodel = bitswitch.quantize(model, bits=(8, 6, 4, 2))
    bitswitch.calibrate(qmodel, batches)
    bitswitch.set_precision(qmodel, 4)            # or {"layer1.0.conv1": (4, 8), ...}
    bitswitch.save(qmodel, "model.safetensors")   # int8 codes + scales, no FP32 copy
    model = bitswitch.load("model.safetensors")   # bit-identical at every bit-width
"""

from .cost import LayerCost, layer_costs, layer_table
from .export.checkpoint import CheckpointError, load, save
from .nn.convert import QuantConfig, calibrate, conversion_report, get_precision, quantize, quantized_layers, set_precision

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "LayerCost", "QuantConfig", "calibrate", "conversion_report", "get_precision", "layer_costs",
    "layer_table", "load", "quantize", "quantized_layers", "save", "set_precision",
]
