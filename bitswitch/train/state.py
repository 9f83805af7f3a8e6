"""Resumable training state: one safetensors file, written atomically, no pickle.

Tensors (latent FP32 model state, optimizer state, RNG state) are safetensors entries named
``model.<key>``, ``optim.<param index>.<key>`` and ``rng.torch``; everything else (epoch, step,
best metric, optimizer hyper-parameters, the run config) is JSON in the file's metadata. One SHA-256 covers the metadata and the tensors
(:mod:`bitswitch.export.container`), and every field and tensor is checked against the run before it
is used, so a damaged or edited file is refused instead of silently resuming from garbage.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..export import container

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
    }
    return container.write(path, tensors, metadata)


def _check_info(info: Any, path: Path) -> None:
    if not isinstance(info, dict):
        raise StateError(f"{path}: metadata info must be an object")
    for key in ("epoch", "step"):
        v = info.get(key)
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise StateError(f"{path}: metadata info.{key} must be a non-negative integer, got {v!r}")
    best = info.get("best")
    if best is not None and not (isinstance(best, (int, float)) and not isinstance(best, bool) and math.isfinite(best)):
        raise StateError(f"{path}: metadata info.best must be a finite number or null, got {best!r}")
    if not isinstance(info.get("history"), list):
        raise StateError(f"{path}: metadata info.history must be a list")


def read_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a state file: ``(tensors, metadata with JSON decoded)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state to resume from: {path} does not exist")
    tensors, meta = container.read(path, StateError)
    if meta.get("format") != STATE_FORMAT:
        raise StateError(f"{path}: not a bitswitch training state (format={meta.get('format')!r}, expected {STATE_FORMAT!r})")
    if meta.get("format_version") != str(STATE_VERSION):
        raise StateError(f"{path}: training state version {meta.get('format_version')!r} is not supported (expected {STATE_VERSION})")
    unknown = sorted(set(meta) - {"format", "format_version", "config", "info", "optimizer", "sha256"})
    if unknown:
        raise StateError(f"{path}: metadata {unknown[0]}: unknown key")
    decoded = {}
    for key in ("config", "info", "optimizer"):
        try:
            decoded[key] = json.loads(meta[key])
        except (KeyError, ValueError, RecursionError) as e:
            raise StateError(f"{path}: metadata {key}: missing or not valid JSON ({type(e).__name__})") from None
    if not isinstance(decoded["config"], dict):
        raise StateError(f"{path}: metadata config must be an object")
    _check_info(decoded["info"], path)
    opt = decoded["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("param_groups"), list) and isinstance(opt.get("scalars"), dict)
            and all(isinstance(g, dict) for g in opt["param_groups"]) and all(isinstance(d, dict) for d in opt["scalars"].values())):
        raise StateError(f"{path}: metadata optimizer must be {{\"param_groups\": [objects], \"scalars\": {{index: object}}}}")
    return tensors, decoded


def _is_step(name: str) -> bool:
    """``optim.<i>.step``, or ``optim.<i>.step@<b>`` (a bit-width's own state, ``optimizer_state: per_bit``): a scalar count, not shaped like its parameter."""
    return name.split(".", 2)[-1].split("@")[0] == "step"


def _check_fits(tensors: dict[str, torch.Tensor], meta: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every tensor and optimizer field of the file must match this run's model and optimizer."""
    expected = model.state_dict()
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = sorted(set(expected) - set(model_sd)), sorted(set(model_sd) - set(expected))
    if missing or unexpected:
        raise StateError(f"training state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in expected.items():
        if model_sd[k].shape != v.shape or model_sd[k].dtype != v.dtype:
            raise StateError(f"training state tensor model.{k}: {model_sd[k].dtype} {list(model_sd[k].shape)}, the model needs {v.dtype} {list(v.shape)}")
        if model_sd[k].is_floating_point() and not torch.isfinite(model_sd[k]).all():
            raise StateError(f"training state tensor model.{k}: contains NaN or Inf")
    current = optimizer.state_dict()["param_groups"]
    groups = meta["optimizer"]["param_groups"]
    if len(groups) != len(current) or any(sorted(g) != sorted(c) or g["params"] != c["params"] for g, c in zip(groups, current)):
        raise StateError("training state has a different optimizer layout than this run")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    indices = {name.split(".")[1] for name in tensors if name.startswith("optim.")} | set(meta["optimizer"]["scalars"])
    for idx in indices:
        if not (idx.isdigit() and int(idx) < len(params)):
            raise StateError(f"training state optimizer entry {idx!r}: not a parameter index (0..{len(params) - 1})")
    for name, t in tensors.items():
        if name.startswith("optim.") and not _is_step(name) and t.shape != params[int(name.split(".")[1])].shape:
            raise StateError(f"training state tensor {name}: shape {list(t.shape)} does not fit its parameter {list(params[int(name.split('.')[1])].shape)}")
    rng = tensors.get("rng.torch")
    if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        raise StateError("training state tensor rng.torch: missing or not a CPU generator state")
    unknown = sorted(k for k in tensors if not k.startswith(("model.", "optim.")) and k not in ("rng.torch", "rng.cuda"))
    if unknown:
        raise StateError(f"training state tensor {unknown[0]}: unknown entry")


def restore_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load model, optimizer and RNG state in place; returns the ``info`` dict."""
    _check_fits(tensors, meta, model, optimizer)
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    device = next(iter(expected.values())).device
    model.load_state_dict({k: v.to(device) for k, v in model_sd.items()}, strict=True)
    opt_sd = _unflatten_optimizer({k: v if _is_step(k) else v.to(device) for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"])
    optimizer.load_state_dict(opt_sd)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta["info"]


__all__ = ["save_state", "read_state", "restore_state", "StateError", "STATE_FORMAT"]
