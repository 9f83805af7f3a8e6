"""Storage and export: integer safetensors checkpoints, packed low-precision storage, ONNX QDQ.

``onnx``/``onnxruntime`` are optional (``pip install 'bitswitch[export]'``) and imported only when an
ONNX function is called.
"""

from .checkpoint import CheckpointError, load, read_checkpoint, save
from .compact import save_compact, verify_compact
from .onnx import UnsupportedOpError, VerificationError, executed_kernels, export_onnx, ort_session, run_onnx, verify_onnx

__all__ = [
    "CheckpointError", "UnsupportedOpError", "VerificationError", "executed_kernels", "export_onnx", "load",
    "ort_session", "read_checkpoint", "run_onnx", "save", "save_compact", "verify_compact", "verify_onnx",
]
