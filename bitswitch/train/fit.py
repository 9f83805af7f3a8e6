"""Does the model fit the data? Checked on one tiny batch before calibration and training start.

Without it, ``model_kwargs`` that contradict the dataset (``num_classes: 5`` on 10 classes,
``in_channels: 3`` on greyscale images) fail at the first step, after minutes of data loading and
calibration, with a raw shape error from deep inside the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def check_model_fits_data(model: nn.Module, input_shape: Sequence[int], num_classes: int, what: str) -> None:
    """``ValueError`` unless ``model`` maps a ``(2, *input_shape)`` batch to ``(2, num_classes)`` logits."""
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(2, *input_shape))
    except Exception as e:  # shape errors surface as RuntimeError deep inside torch
        raise ValueError(f"{what}: the model cannot run on inputs of shape {list(input_shape)} ({type(e).__name__}: {' '.join(str(e).split())})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{what}: the model gives outputs of shape {shape} per batch of 2, the data has {num_classes} classes")


__all__ = ["check_model_fits_data"]
