"""Storage and export: integer safetensors checkpoints (and ONNX QDQ export)."""

from .checkpoint import CheckpointError, load, read_checkpoint, save

__all__ = ["CheckpointError", "load", "read_checkpoint", "save"]
