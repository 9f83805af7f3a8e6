"""Which model a command rebuilds from a checkpoint: one rule for eval, export, hessian, info and search.

A built-in architecture is rebuilt from the file alone. A custom one needs the user's code: the
function given as ``--model package.module:factory``, or the factory the file records (written by
``bitswitch train --model``), used only with ``--trust-factory``, because importing a module runs
its code and a file's metadata must never make a command do that (``docs/security.md``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from ..models.factory import build_factory_model


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="PACKAGE.MODULE:FACTORY",
                   help="a custom architecture: the function that builds the FP32 model (imports and runs that code)")
    p.add_argument("--trust-factory", action="store_true",
                   help="build a custom architecture with the factory the checkpoint records (imports and runs that code)")


def load_model(args: argparse.Namespace, path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, metadata)`` of a checkpoint, with the architecture chosen as the module docstring says."""
    from ..export.checkpoint import load, read_checkpoint

    _, meta = read_checkpoint(path)
    arch = meta["arch"] or {}
    spec = getattr(args, "model", None)
    if "name" in arch and spec is None:
        return load(path), meta
    recorded = arch.get("factory")
    if spec is None:
        if recorded is None:
            raise ValueError(f"{path} holds a custom architecture and names no factory: pass --model package.module:factory")
        if not getattr(args, "trust_factory", False):
            raise ValueError(f"{path} was built by {recorded!r}; importing it runs that code: pass --trust-factory to use it, "
                             f"or --model package.module:factory")
        spec = recorded
    kwargs = arch.get("kwargs", {}) if recorded == spec else {}
    return load(path, model=build_factory_model(spec, **kwargs)), meta


__all__ = ["add_model_args", "load_model"]
