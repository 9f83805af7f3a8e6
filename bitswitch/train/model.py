"""The model of a run: the FP32 architecture built from the data, its starting weights, and its quantized form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..export.checkpoint import read_checkpoint
from ..models import accepted_kwargs, build
from ..nn.convert import quantize
from .config import TrainConfig
from .data import Data, TextData


def build_float_model(cfg: TrainConfig, data: Data | TextData) -> nn.Module:
    """The FP32 architecture; ``num_classes``/``in_channels``/``in_features`` come from the data
    (language models: ``vocab_size`` from the text and ``context`` from the config)."""
    accepted = accepted_kwargs(cfg.model)  # raises with the list of available models
    if isinstance(data, TextData):
        auto = {"vocab_size": len(data.vocab), "context": cfg.context}
        kwargs = {k: v for k, v in auto.items() if accepted is None or k in accepted}
    else:
        c, h, w = data.input_shape
        auto = {"num_classes": data.num_classes, "in_channels": c, "in_features": c * h * w}
        kwargs = {k: v for k, v in auto.items() if accepted is None and k != "in_features" or accepted is not None and k in accepted}
    kwargs.update(cfg.model_kwargs)
    return build(cfg.model, **kwargs)


def load_fp32_weights(model: nn.Module, source: str | Path) -> Path:
    """Copy the weights of an FP32 checkpoint (an fp32 run directory or its ``best.safetensors``) into ``model``.

    The file must hold the architecture ``model`` was built as, so a run cannot silently start from
    another model's weights.
    """
    path = Path(source)
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no FP32 weights at {path}")
    tensors, meta = read_checkpoint(path)
    if meta["storage"] != "float":
        raise ValueError(f"init_from: {path} is a quantized checkpoint; init_from takes the checkpoint of an fp32 run")
    mine = getattr(model, "bitswitch_arch", None)
    if meta["arch"] != mine:
        raise ValueError(f"init_from: {path} holds {meta['arch']}, but this run builds {mine}")
    tensors.update({alias: tensors[primary] for alias, primary in meta["tied"].items()})  # a tied LM head is stored once
    model.load_state_dict(tensors, strict=True)
    return path


def quantize_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``model`` converted for the run's bit-widths, rounding and variant (scales not yet calibrated).

    ``weight_only``: the layers the plan quantizes are converted again with float inputs (the plan
    decides which layers, so the choice is the same as a weights-and-activations run's).
    """
    fp: Any = cfg.full_precision[0] if cfg.full_precision in (["first_last"], ["auto"]) else list(cfg.full_precision)
    kwargs = dict(storage_bits=cfg.storage_bits, full_precision=fp, rounding=cfg.rounding, variant=cfg.variant, switchable_bn=cfg.switchable_bn)
    if cfg.weight_only:
        kwargs["weight_only"] = list(quantize(model, cfg.bits, **kwargs).bitswitch_config.quantized)
    return quantize(model, cfg.bits, **kwargs)


__all__ = ["build_float_model", "load_fp32_weights", "quantize_model"]
