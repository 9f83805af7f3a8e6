"""Models from the user's own code: a ``package.module:factory`` string names a callable returning an ``nn.Module``.

``bitswitch train`` accepts such a string as ``model`` and records it in every checkpoint as
``arch = {"factory": "package.module:factory", "kwargs": {...}}``, so the architecture can be
rebuilt later. Building one *imports and runs the user's code*: only do it for a factory the user
named or accepted (``bitswitch.load`` never does it by itself; see docs/security.md).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from torch import nn

FACTORY_PATTERN = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_factory(spec: Any) -> bool:
    """Does ``spec`` name a factory (``"package.module:callable"``) rather than a built-in model?"""
    return isinstance(spec, str) and ":" in spec


def check_factory(spec: str, what: str = "model factory") -> str:
    """``spec`` if it looks like ``package.module:callable``, else a ``ValueError`` saying so (nothing imported)."""
    if not FACTORY_PATTERN.fullmatch(spec):
        raise ValueError(f"{what} {spec!r} must look like package.module:callable (e.g. mypkg.models:make_net)")
    return spec


def import_factory(spec: str, what: str = "model factory") -> Callable[..., Any]:
    """Import the callable ``spec`` names (this runs the module's code); ``what`` names it in errors."""
    module_name, _, attr = check_factory(spec, what).partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r} ({e}); is its folder on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{what} {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


def build_factory_model(spec: str, **kwargs: Any) -> nn.Module:
    """``factory(**kwargs)``, checked to be an ``nn.Module`` and tagged with ``bitswitch_arch`` for checkpoints."""
    factory = import_factory(spec)
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"model factory {spec!r} rejected its arguments {kwargs} ({e})") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    model.bitswitch_arch = {"factory": spec, "kwargs": dict(kwargs)}
    return model


__all__ = ["FACTORY_PATTERN", "build_factory_model", "check_factory", "import_factory", "is_factory"]
