"""Resumable training state: one safetensors file, written atomically, no pickle.

Tensors (latent FP32 model state, optimizer state, RNG state) are safetensors entries named
``model.<key>``, ``optim.<param index>.<key>`` and ``rng.torch``; everything else (epoch, step,
best metric, optimizer hyper-parameters, the run config) is JSON in the file's metadata, with a
SHA-256 of the tensors so a damaged file is refused instead of silently resuming from garbage.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..export.checkpoint import atomic_write_bytes, tensor_digest

STATE_FORMAT = "bitswitch-train-state"
STATE_VERSION = 1


class StateError(ValueError):
    """A training-state file that cannot be resumed from (corrupted, foreign, other config)."""


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = t
    for idx, d in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(d)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, info: dict[str, Any], config_json: str) -> Path:
    """Write the complete training state (``info``: epoch, step, best, history...)."""
    tensors = {f"model.{k}": v.detach().contiguous().clone().cpu() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors.update({k: v.detach().contiguous().clone().cpu() for k, v in opt_tensors.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    metadata = {
        "format": STATE_FORMAT,
        "format_version": str(STATE_VERSION),
        "config": config_json,
        "info": json.dumps(info),
        "optimizer": json.dumps(opt_meta),
        "sha256": tensor_digest(tensors),
    }
    path = Path(path)
    atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def read_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a state file: ``(tensors, metadata with JSON decoded)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state to resume from: {path} does not exist")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise StateError(f"{path}: not a safetensors file, or truncated")
            header = json.loads(f.read(n))
        meta = header.get("__metadata__") or {}
    except StateError:
        raise
    except Exception as e:
        raise StateError(f"{path}: unreadable training state ({type(e).__name__}: {e})") from None
    if meta.get("format") != STATE_FORMAT:
        raise StateError(f"{path}: not a bitswitch training state (format={meta.get('format')!r}, expected {STATE_FORMAT!r})")
    if meta.get("format_version") != str(STATE_VERSION):
        raise StateError(f"{path}: training state version {meta.get('format_version')!r} is not supported (expected {STATE_VERSION})")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
        decoded = {"config": json.loads(meta["config"]), "info": json.loads(meta["info"]), "optimizer": json.loads(meta["optimizer"])}
    except Exception as e:
        raise StateError(f"{path}: unreadable training state ({type(e).__name__}: {e})") from None
    if tensor_digest(tensors) != meta.get("sha256"):
        raise StateError(f"{path}: checksum mismatch: the training state is corrupted")
    return tensors, decoded


def restore_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load model, optimizer and RNG state in place; returns the ``info`` dict."""
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(model_sd)), sorted(set(model_sd) - set(expected))
    if missing or unexpected:
        raise StateError(f"training state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    device = next(iter(expected.values())).device
    model.load_state_dict({k: v.to(device) for k, v in model_sd.items()}, strict=True)
    opt_sd = _unflatten_optimizer({k: v.to(device) if not k.endswith(".step") else v for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"])
    if len(opt_sd["param_groups"]) != len(optimizer.param_groups):
        raise StateError("training state has a different optimizer layout than this run")
    optimizer.load_state_dict(opt_sd)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta["info"]


__all__ = ["save_state", "read_state", "restore_state", "StateError", "STATE_FORMAT"]
