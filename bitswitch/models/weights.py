"""Strict, explainable weight loading.

``nn.Module.load_state_dict`` reports problems in one long message and stops at
the first shape mismatch; checking everything up front gives a single readable
error listing missing, unexpected and mis-shaped keys together.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["load_state_dict_strict", "load_weights"]

_SHOW = 5  # how many keys of each kind to show in an error message


def _ignorable(key: str) -> bool:
    # BN step counters carry no learned state and differ between frameworks/versions.
    return key.endswith("num_batches_tracked")


def _summarise(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f", ... (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"{len(items)} {title}: {shown}{more}"


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load ``state_dict`` into ``model`` after checking every key and shape.

    Raises ``ValueError`` describing missing keys, unexpected keys and shape
    mismatches (the first few of each, with counts). ``num_batches_tracked``
    buffers may be absent on either side.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not _ignorable(k)]
    unexpected = [k for k in state_dict if k not in own and not _ignorable(k)]
    mismatched = [
        f"{k} (checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)})"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [
            _summarise(title, items)
            for title, items in (
                ("missing key(s)", missing),
                ("unexpected key(s)", unexpected),
                ("shape mismatch(es)", mismatched),
            )
            if items
        ]
        raise ValueError(
            f"state dict does not match {type(model).__name__}: " + "; ".join(parts)
        )
    sd = {k: v for k, v in state_dict.items() if k in own}
    # Fill in any counters absent from the checkpoint so the strict load succeeds.
    for k, v in own.items():
        if k not in sd:
            sd[k] = v
    model.load_state_dict(sd, strict=True)


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a ``.safetensors`` or ``.pt``/``.pth`` state dict from ``path`` strictly.

    ``.pt`` files are read with ``weights_only=True`` so untrusted files cannot run code.
    Returns ``model`` for chaining.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            state_dict: Mapping[str, Tensor] = load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for anything beyond plain tensors, or a damaged file
            raise ValueError(f"{path}: refused: not a plain PyTorch state dict ({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
        if not isinstance(state_dict, Mapping):
            raise ValueError(
                f"{path} does not contain a state dict (got {type(state_dict)})"
            )
    load_state_dict_strict(model, state_dict)
    return model
